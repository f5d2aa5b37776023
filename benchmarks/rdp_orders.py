"""What fedmm's RDP orders (Opacus' up to 63, and 128, 256, 512) change against Opacus' own orders.

    python benchmarks/rdp_orders.py

Prints the ε of one small-ε example both ways, then recomputes the σ that each hospital of the privacy
sweep (`+experiment=privacy_utility`, seeds 0-2, targets 1, 2, 4, 8) is calibrated to, both ways, and
says whether any differs. Reads the built-in dataset's partitions (extracts their features if uncached).
"""

import warnings

import fedmm.privacy.accounting as accounting
from fedmm.compose import compose_config
from fedmm.federation import load_federated_data
from fedmm.privacy.accounting import SampledGaussianSteps, epsilon_spent
from fedmm.privacy.sample_level import plan_sample_privacy

OPACUS_ORDERS, FEDMM_ORDERS = accounting.RDP_ORDERS[:-3], accounting.RDP_ORDERS


def with_orders(orders, compute, *args):
    """`compute(*args)` with `orders` as the RDP orders."""
    accounting.RDP_ORDERS = orders
    try:
        return compute(*args)
    finally:
        accounting.RDP_ORDERS = FEDMM_ORDERS


def sigma(cfg, n: int, hospital: int) -> float:
    return plan_sample_privacy(cfg, n, hospital).dpsgd.noise_multiplier


def main() -> None:
    warnings.simplefilter("ignore")  # Opacus warns whenever the best order is the last one
    example = (SampledGaussianSteps(noise_multiplier=50.0, sample_rate=0.01, steps=10),)
    print("10 steps, sigma 50, q 0.01, delta 1e-5: epsilon "
          + ", ".join(f"{name} {with_orders(orders, epsilon_spent, example, 1e-5):.4f}"
                      for name, orders in (("opacus orders", OPACUS_ORDERS), ("fedmm orders", FEDMM_ORDERS))))
    plans = differing = 0
    for seed in (0, 1, 2):
        for target in (1, 2, 4, 8):
            cfg = compose_config(["+experiment=privacy_utility", f"seed={seed}", "privacy=dp_sgd",
                                  f"privacy.sample.target_epsilon={target}"])
            for hospital, n in load_federated_data(cfg).paired_counts().items():
                if n:
                    sigmas = [with_orders(orders, sigma, cfg, n, hospital) for orders in (OPACUS_ORDERS, FEDMM_ORDERS)]
                    plans, differing = plans + 1, differing + (sigmas[0] != sigmas[1])
                    print(f"seed {seed} target {target} hospital {hospital} (n={n}): "
                          f"sigma {sigmas[0]:.4f} (opacus) / {sigmas[1]:.4f} (fedmm)")
    print(f"privacy sweep: {plans} hospital plans, {differing} with a different sigma")


if __name__ == "__main__":
    main()
