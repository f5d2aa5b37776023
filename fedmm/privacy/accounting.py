"""Sample-level privacy accounting: a hospital's DP-SGD history and its cumulative ε (RDP, via Opacus).

Mironov, 2017, "Rényi Differential Privacy" (CSF); Mironov, Talwar and Zhang, 2019, "Rényi Differential
Privacy of the Sampled Gaussian Mechanism". Every round a hospital trains appends what it did (noise
multiplier, Poisson sampling rate, number of noisy steps) to its ledger; ε is always computed over the
whole ledger, so it is cumulative over every round the hospital took part in, never per round.
"""

from dataclasses import dataclass

EPSILON_TOLERANCE = 0.01  # the derived σ spends between target - 0.01 and target


@dataclass(frozen=True)
class SampledGaussianSteps:
    """`steps` DP-SGD steps, each a Gaussian mechanism on a Poisson sample of rate `sample_rate`."""

    noise_multiplier: float  # σ: noise std / clipping bound
    sample_rate: float  # q: each sample's probability of being in a step's batch
    steps: int


Ledger = tuple[SampledGaussianSteps, ...]


def epsilon_spent(ledger: Ledger, delta: float) -> float:
    """Cumulative ε at `delta` over everything in the ledger (0 for an empty one)."""
    history = [(entry.noise_multiplier, entry.sample_rate, entry.steps) for entry in ledger if entry.steps > 0]
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant  # opacus loads only where ε is computed (1 s per process)

    accountant = RDPAccountant()
    accountant.history = history
    return float(accountant.get_epsilon(delta=delta))


def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest σ (to `EPSILON_TOLERANCE`) whose `steps` sampled steps spend at most `target_epsilon`.
    Raises ValueError when no σ reaches it (RDP's conversion has a floor near log(1/δ)/63)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant="rdp", epsilon_tolerance=EPSILON_TOLERANCE))


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
