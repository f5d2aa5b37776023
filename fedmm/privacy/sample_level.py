"""A hospital's sample-level privacy plan and budget: σ, q, δ and the ε it may spend, fixed before round 1.

The plan depends only on the configuration and the hospital's number of paired training samples n (the
samples DP-SGD reads), so the server can check every hospital's plan before any training and each
hospital derives the same plan itself.
"""

import logging
from dataclasses import dataclass

from fedmm.config import ConfigError, ExperimentConfig, SampleDPConfig
from fedmm.privacy.accounting import (
    ACCOUNTANTS,
    Ledger,
    SampledGaussianSteps,
    default_delta,
    epsilon_spent,
    noise_for_target,
)
from fedmm.training.bank import DPSGD, sample_rate

log = logging.getLogger(__name__)


ON_BUDGET = ("stop_hospital", "stop_run")


@dataclass(frozen=True)
class SamplePrivacyPlan:
    dpsgd: DPSGD
    delta: float
    steps_per_round: int
    planned_rounds: int  # every round: a hospital may be sampled in all of them
    max_epsilon: float | None  # the budget; None: none
    accountant: str = "rdp"  # how its ε is computed (`fedmm.privacy.accounting.ACCOUNTANTS`)

    def epsilon(self, ledger: Ledger) -> float:
        """The cumulative ε of `ledger` at this plan's δ, by its accountant."""
        return epsilon_spent(ledger, self.delta, self.accountant)

    def round_steps(self) -> SampledGaussianSteps:
        return SampledGaussianSteps(self.dpsgd.noise_multiplier, self.dpsgd.sample_rate, self.steps_per_round)

    @property
    def planned_epsilon(self) -> float:
        return self.epsilon((self.round_steps(),) * self.planned_rounds)

    def would_exceed(self, ledger: Ledger) -> bool:
        """Whether training one more round would take the cumulative ε past the budget."""
        if self.max_epsilon is None:
            return False
        return self.epsilon(ledger + (self.round_steps(),)) > self.max_epsilon


def plan_sample_privacy(cfg: ExperimentConfig, num_paired: int, hospital: int) -> SamplePrivacyPlan | None:
    """The plan of a hospital with `num_paired` paired training samples; None when sample-level DP is off
    or the hospital has no pair to train on (it then spends no privacy). Raises ConfigError when the
    target ε cannot be reached."""
    dp = cfg.privacy.sample
    if not dp.enabled or num_paired == 0:
        return None
    check_sample_privacy(dp)
    rate = sample_rate(cfg.train.batch_size, num_paired)
    steps_per_round = cfg.train.local_epochs * DPSGD(0.0, dp.max_grad_norm, rate).steps_per_epoch()
    delta = dp.delta if dp.delta is not None else default_delta(num_paired)
    rounds = cfg.federation.rounds
    if dp.noise_multiplier is not None:
        noise = dp.noise_multiplier
    else:
        assert dp.target_epsilon is not None  # check_sample_privacy
        try:
            noise = noise_for_target(dp.target_epsilon, delta, rate, rounds * steps_per_round, dp.accountant)
        except ValueError as error:
            raise ConfigError(
                f"privacy.sample.target_epsilon={dp.target_epsilon} cannot be reached by hospital {hospital} "
                f"({num_paired} paired samples, q={rate:.4f}, {rounds} rounds x {steps_per_round} steps, "
                f"delta={delta:.2g}) with any noise multiplier ({error}); raise target_epsilon or delta, or "
                f"plan fewer rounds (federation.rounds) or local epochs"
            ) from error
    budget = dp.max_epsilon if dp.max_epsilon is not None else dp.target_epsilon
    return SamplePrivacyPlan(DPSGD(noise, dp.max_grad_norm, rate), delta, steps_per_round, rounds, budget,
                             dp.accountant)


def check_sample_privacy(dp: SampleDPConfig) -> None:
    """Impossible budgets, named: both or neither of σ and target ε, ε <= 0, δ outside (0, 1), C <= 0."""
    if (dp.noise_multiplier is None) == (dp.target_epsilon is None):
        raise ConfigError("privacy.sample: set exactly one of noise_multiplier and target_epsilon "
                          f"(got noise_multiplier={dp.noise_multiplier}, target_epsilon={dp.target_epsilon})")
    if dp.noise_multiplier is not None and dp.noise_multiplier <= 0:
        raise ConfigError(f"privacy.sample.noise_multiplier={dp.noise_multiplier} must be > 0; "
                          "to train without noise, set privacy.sample.enabled=false")
    for name in ("target_epsilon", "max_epsilon"):
        value = getattr(dp, name)
        if value is not None and not value > 0:
            raise ConfigError(f"privacy.sample.{name}={value} is impossible: ε must be > 0")
    if dp.delta is not None and not 0 < dp.delta < 1:
        raise ConfigError(f"privacy.sample.delta={dp.delta} is impossible: δ must lie in (0, 1), "
                          "and well below 1/n; null picks 1/(10·n)")
    if not dp.max_grad_norm > 0:
        raise ConfigError(f"privacy.sample.max_grad_norm={dp.max_grad_norm} must be > 0")
    if dp.accountant not in ACCOUNTANTS:
        raise ConfigError(f"privacy.sample.accountant={dp.accountant!r} is unknown; valid: {list(ACCOUNTANTS)}")


def plan_all_hospitals(cfg: ExperimentConfig, paired_counts: dict[int, int]) -> dict[int, SamplePrivacyPlan]:
    """Every hospital's plan, so an unreachable target fails before any training; logs what each will spend."""
    plans = {}
    for hospital, num_paired in sorted(paired_counts.items()):
        plan = plan_sample_privacy(cfg, num_paired, hospital)
        if plan is not None:
            plans[hospital] = plan
            log.info("hospital %d: DP-SGD sigma=%.3f q=%.4f delta=%.2g, %d steps/round; %d rounds spend epsilon=%.3f",
                     hospital, plan.dpsgd.noise_multiplier, plan.dpsgd.sample_rate, plan.delta, plan.steps_per_round,
                     plan.planned_rounds, plan.planned_epsilon)
    return plans
