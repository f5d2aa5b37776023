"""Sample-level privacy accounting: a hospital's DP-SGD history and its cumulative ε.

Two accountants (`privacy.sample.accountant`):
- `rdp`: Rényi DP via Opacus' `RDPAccountant`. Mironov, 2017, "Rényi Differential Privacy" (CSF);
  Mironov, Talwar and Zhang, 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism".
  Over `RDP_ORDERS`: Opacus' default orders (up to 63) and 128, 256 and 512, as Google's dp_accounting
  and TF Privacy use. Where the best order is past 63 (small ε for the noise) Opacus' own orders give a
  looser ε, and hence more noise for a target; elsewhere the ε is the same.
- `pld`: privacy loss distributions via Google's `dp_accounting` (`PLDAccountant`). Koskela, Jälkö and
  Honkela, 2020 (AISTATS); Doroshenko et al., 2022, "Connect the Dots: Tighter Discrete Approximations
  of Privacy Loss Distributions" (PETS). It is tighter than RDP's conversion for the same mechanism;
  tests check it against Opacus' independent PRV accountant (Gopi, Lee and Wutschitz, 2021) within 1%.
Every round a hospital trains appends what it did (noise multiplier, Poisson sampling rate, number of
noisy steps) to its ledger; ε is always computed over the whole ledger, so it is cumulative over every
round the hospital took part in, never per round.
"""

from dataclasses import dataclass

EPSILON_TOLERANCE = 0.01  # the derived σ spends between target - 0.01 and target
ACCOUNTANTS = ("rdp", "pld")
RDP_ORDERS = (*(1 + x / 10.0 for x in range(1, 100)), *range(12, 64), 128, 256, 512)  # Opacus' + dp_accounting's
PLD_DISCRETIZATION = 1e-3  # dp_accounting's value_discretization_interval: ε within 0.1% of 1e-4's, 10x faster


@dataclass(frozen=True)
class SampledGaussianSteps:
    """`steps` DP-SGD steps, each a Gaussian mechanism on a Poisson sample of rate `sample_rate`."""

    noise_multiplier: float  # σ: noise std / clipping bound
    sample_rate: float  # q: each sample's probability of being in a step's batch
    steps: int


Ledger = tuple[SampledGaussianSteps, ...]


def epsilon_spent(ledger: Ledger, delta: float, accountant: str = "rdp") -> float:
    """Cumulative ε at `delta` over everything in the ledger (0 for an empty one), by `accountant`."""
    history = composed(ledger)
    if not history:
        return 0.0
    if accountant == "pld":
        return pld_epsilon(history, delta)
    if accountant != "rdp":
        raise ValueError(f"unknown accountant {accountant!r}; valid: {list(ACCOUNTANTS)}")
    from opacus.accountants import RDPAccountant  # opacus loads only where ε is computed (1 s per process)

    rdp = RDPAccountant()
    rdp.history = history
    return float(rdp.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))


def composed(ledger: Ledger) -> list[tuple[float, float, int]]:
    """[(σ, q, steps), ...] with one entry per distinct (σ, q): steps of the same mechanism compose by adding
    their count (RDP: steps × the one-step RDP; PLD: a self-composition), so a hospital that trains every round
    with the same plan costs one RDP evaluation however long its ledger. Without this the accountant's cost
    grew with the round: at round 50, 80% of a DP-SGD worker's time was RDP over the ledger, entry by entry."""
    steps: dict[tuple[float, float], int] = {}
    for entry in ledger:
        if entry.steps > 0:
            key = (entry.noise_multiplier, entry.sample_rate)
            steps[key] = steps.get(key, 0) + entry.steps
    return [(noise, rate, count) for (noise, rate), count in steps.items()]


def pld_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """ε of the composed Poisson-subsampled Gaussian steps [(σ, q, steps), ...] by dp_accounting's PLD."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for noise, rate, steps in history:
        pld.compose(dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(noise)), steps)
    return float(pld.get_epsilon(delta))


def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                     accountant: str = "rdp") -> float:
    """The smallest σ (to `EPSILON_TOLERANCE`) whose `steps` sampled steps spend at most `target_epsilon`.
    Raises ValueError when no σ reaches it (RDP's conversion has a floor near log(1/δ)/511)."""
    if accountant == "rdp":
        from opacus.accountants.utils import get_noise_multiplier

        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant="rdp",
                                          epsilon_tolerance=EPSILON_TOLERANCE, alphas=list(RDP_ORDERS)))

    def spent(noise: float) -> float:
        return epsilon_spent((SampledGaussianSteps(noise, sample_rate, steps),), delta, accountant)

    low, high = 0.0, 10.0  # as Opacus' search: double σ until the target is met, then bisect
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 2**12:
            raise ValueError(f"no noise multiplier up to {2**12} reaches ε={target_epsilon}")
    while True:
        middle = (low + high) / 2
        epsilon = spent(middle)
        if epsilon <= target_epsilon:
            high = middle
            if target_epsilon - epsilon <= EPSILON_TOLERANCE:
                return high
        else:
            low = middle


def default_delta(num_samples: int) -> float:
    """δ well below 1/n: a mechanism may otherwise publish one whole sample and still be '(ε, δ)-DP'."""
    return 1.0 / (10 * num_samples)


def ledger_to_lists(ledger: Ledger) -> dict[str, list]:
    """Flat lists, as Flower's ConfigRecord and JSON hold them."""
    return {"noise-multiplier": [entry.noise_multiplier for entry in ledger],
            "sample-rate": [entry.sample_rate for entry in ledger],
            "steps": [entry.steps for entry in ledger]}


def ledger_from_lists(lists: dict[str, list]) -> Ledger:
    return tuple(SampledGaussianSteps(float(noise), float(rate), int(steps)) for noise, rate, steps in
                 zip(lists["noise-multiplier"], lists["sample-rate"], lists["steps"], strict=True))
