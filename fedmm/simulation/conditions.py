"""The simulated hospitals' machines (`conditions=`): when a sampled hospital is offline, how fast each one
trains, and what a round's deadline does to the slow ones. Everything here runs in virtual time and is
drawn from the run's seed, so a run's rounds, participants and clock are the same on every engine and
every rerun, whatever the real machine's speed.

Availability (`Availability`, server side): hospital h is offline in a long-run share p_h of rounds, p_h =
`dropout` (fixed) or p_h ~ Beta(p·c, (1 - p)·c). An outage lasts `outage_rounds` = k rounds: while online,
an outage starts in a round with probability q_h = p_h / (k(1 - p_h) + p_h), which makes the offline
share p_h (an alternating renewal process: online runs of mean (1 - q)/q rounds, outages of k). A hospital
that is sampled while offline is sent nothing (like a node whose heartbeats stopped) and its update is
missing from that round; it is not lost and comes back when its outage ends. The schedule of hospital h
depends only on (seed, h), so it is the same for every strategy, engine and run length.

Virtual time (`Clock`, hospital side): hospital h trains at s_h samples per virtual second, s_h =
`samples_per_s` (fixed) or log-normal with that median; a local step over b rows costs b / s_h. With
`deadline_s`, a step that would end after the deadline is not taken: the hospital sends the steps that fit
(`late=partial`, fewer steps, as FedNova expects), or nothing (`late=drop`: it is late, and what it trained
is discarded). The server's round lasts as long as its slowest on-time hospital, or the whole deadline
when one was late. Communication time is not modelled.
"""

from dataclasses import dataclass

import numpy as np

from fedmm.config import AvailabilityConfig, ComputeConfig, ConditionsConfig, ConfigError
from fedmm.seeding import AVAILABILITY_STREAM, COMPUTE_STREAM

DROPOUT_DISTRIBUTIONS = ("fixed", "beta")
SPEED_DISTRIBUTIONS = ("fixed", "lognormal")
LATE = ("drop", "partial")


def dropout_rate(cfg: AvailabilityConfig, seed: int, hospital: int) -> float:
    """Hospital `hospital`'s long-run share of offline rounds."""
    if cfg.distribution == "fixed" or cfg.dropout == 0:
        return cfg.dropout
    rng = np.random.default_rng([seed, AVAILABILITY_STREAM, 0, hospital])
    return float(rng.beta(cfg.dropout * cfg.concentration, (1 - cfg.dropout) * cfg.concentration))


def offline_rounds(cfg: AvailabilityConfig, seed: int, hospital: int, rounds: int) -> np.ndarray:
    """(rounds,) bool: whether `hospital` is offline in rounds 1..rounds. One uniform is drawn per round
    whether it is used or not, so the first r rounds do not depend on `rounds`."""
    rate, k = dropout_rate(cfg, seed, hospital), cfg.outage_rounds
    start = rate / (k * (1 - rate) + rate)  # per online round: the chance that an outage starts
    draws = np.random.default_rng([seed, AVAILABILITY_STREAM, 1, hospital]).random(rounds)
    offline, down_until = np.zeros(rounds, dtype=bool), -1
    for index, draw in enumerate(draws):
        if index > down_until and draw < start:
            down_until = index + k - 1
        offline[index] = index <= down_until
    return offline


class Availability:
    """Which hospitals are offline in each round of a run of `rounds` rounds."""

    def __init__(self, cfg: AvailabilityConfig, num_hospitals: int, seed: int, rounds: int) -> None:
        self.rates = [dropout_rate(cfg, seed, hospital) for hospital in range(num_hospitals)]
        self.schedule = np.stack([offline_rounds(cfg, seed, hospital, rounds) for hospital in range(num_hospitals)])

    def offline(self, server_round: int) -> list[int]:
        """Hospitals offline in `server_round` (1-based), sorted; none past the planned rounds."""
        if not 1 <= server_round <= self.schedule.shape[1]:
            return []
        return [int(hospital) for hospital in np.flatnonzero(self.schedule[:, server_round - 1])]


def availability(cfg: ConditionsConfig, num_hospitals: int, seed: int, rounds: int) -> Availability | None:
    """The run's availability model; None when every hospital is always online."""
    if cfg.availability.dropout == 0:
        return None
    return Availability(cfg.availability, num_hospitals, seed, rounds)


def training_speed(cfg: ComputeConfig, seed: int, hospital: int) -> float | None:
    """Hospital `hospital`'s samples per virtual second; None without a virtual clock."""
    if cfg.samples_per_s is None:
        return None
    if cfg.distribution == "fixed":
        return cfg.samples_per_s
    rng = np.random.default_rng([seed, COMPUTE_STREAM, hospital])
    return float(cfg.samples_per_s * np.exp(cfg.sigma * rng.standard_normal()))


@dataclass
class Clock:
    """One hospital's virtual training time in one round: every local step is admitted (and its rows' cost
    added) only if it ends by the deadline; after the first one that does not, none is (`cut`)."""

    samples_per_s: float
    deadline_s: float | None = None
    elapsed_s: float = 0.0
    cut: bool = False  # a step did not fit before the deadline: training stopped there

    def admit(self, samples: int) -> bool:
        cost = samples / self.samples_per_s
        if self.cut or (self.deadline_s is not None and self.elapsed_s + cost > self.deadline_s):
            self.cut = True
            return False
        self.elapsed_s += cost
        return True


def hospital_clock(cfg: ConditionsConfig, seed: int, hospital: int) -> Clock | None:
    """A fresh clock for one training round of `hospital`; None without a virtual clock."""
    speed = training_speed(cfg.compute, seed, hospital)
    return Clock(speed, cfg.deadline_s) if speed is not None else None


def is_ideal(cfg: ConditionsConfig) -> bool:
    """Always online and no clock: a run behaves exactly as without `conditions`."""
    return cfg.availability.dropout == 0 and cfg.compute.samples_per_s is None


def check_conditions(cfg: ConditionsConfig) -> None:
    """Impossible settings, named with the fix."""
    available, compute = cfg.availability, cfg.compute
    if not 0 <= available.dropout < 1:
        raise ConfigError(f"conditions.availability.dropout={available.dropout} must lie in [0, 1): it is the "
                          "share of rounds a hospital is offline (1 would never train)")
    if available.distribution not in DROPOUT_DISTRIBUTIONS:
        raise ConfigError(f"conditions.availability.distribution={available.distribution!r} is unknown; valid: "
                          f"{list(DROPOUT_DISTRIBUTIONS)}")
    if not available.concentration > 0:
        raise ConfigError(f"conditions.availability.concentration={available.concentration} must be > 0")
    if available.outage_rounds < 1:
        raise ConfigError(f"conditions.availability.outage_rounds={available.outage_rounds} must be >= 1")
    if compute.samples_per_s is not None and not compute.samples_per_s > 0:
        raise ConfigError(f"conditions.compute.samples_per_s={compute.samples_per_s} must be > 0, or null for "
                          "no virtual clock")
    if compute.distribution not in SPEED_DISTRIBUTIONS:
        raise ConfigError(f"conditions.compute.distribution={compute.distribution!r} is unknown; valid: "
                          f"{list(SPEED_DISTRIBUTIONS)}")
    if not compute.sigma >= 0:
        raise ConfigError(f"conditions.compute.sigma={compute.sigma} must be >= 0")
    if cfg.late not in LATE:
        raise ConfigError(f"conditions.late={cfg.late!r} is unknown; valid: {list(LATE)}")
    if cfg.deadline_s is not None:
        if not cfg.deadline_s > 0:
            raise ConfigError(f"conditions.deadline_s={cfg.deadline_s} must be > 0, or null to wait for the slowest")
        if compute.samples_per_s is None:
            raise ConfigError("conditions.deadline_s is virtual time, and conditions.compute.samples_per_s is null "
                              "(no virtual clock): set a training speed, or deadline_s=null")
