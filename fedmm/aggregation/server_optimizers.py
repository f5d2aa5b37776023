"""Server optimizers that treat the averaged client update as a pseudo-gradient (plain numpy).

FedAvgM: Hsu, Qi and Brown, 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification" (arXiv:1909.06335). FedAdagrad, FedAdam and FedYogi: Reddi et al., 2021,
"Adaptive Federated Optimization" (ICLR). The equations are Flower's (`flwr.serverapp.strategy`),
including FedAdam's bias correction, so without masking the results equal Flower's strategies.

Modality-aware form: each step receives the head groups that some sampled hospital trained this
round. Only those groups move, and only their optimizer state advances; a group nobody trained keeps
its weights, moments and step count, instead of drifting on stale momentum.
"""

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmm.models.heads import HeadGroup, head_group

State = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class MomentumConfig:
    """FedAvgM's server step (`strategy.server` of configs/strategy/fedavgm.yaml)."""

    lr: float  # η, the server learning rate
    momentum: float  # β


@dataclass(frozen=True)
class AdaptiveConfig:
    """FedAdam's and FedYogi's server step (`strategy.server`)."""

    lr: float  # η
    beta_1: float  # first-moment decay
    beta_2: float  # second-moment decay
    tau: float  # adaptivity: larger tau, closer to plain momentum SGD


@dataclass(frozen=True)
class AdagradConfig:
    """FedAdagrad's server step (`strategy.server`): Flower's FedAdagrad has no momentum (β1 = 0)."""

    lr: float  # η
    tau: float  # adaptivity: larger tau, closer to plain SGD on the averaged update


class ServerOptimizer:
    """x_{t+1} = step(x_t, averaged_t): the base class replaces x by the average (FedAvg)."""

    MOMENTS: tuple[str, ...] = ()  # names of the per-parameter state dicts (saved in checkpoints)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.steps: dict[HeadGroup, int] = {}  # updates each head group has received

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """(moments as "<moment>/<parameter>" arrays, steps per head group), for a checkpoint."""
        moments = {f"{name}/{key}": np.asarray(value) for name in self.MOMENTS
                   for key, value in getattr(self, name).items()}
        return moments, {group.value: count for group, count in self.steps.items()}

    def load_state(self, moments: Mapping[str, np.ndarray], steps: Mapping[str, int]) -> None:
        for name in self.MOMENTS:
            getattr(self, name).clear()
        for label, value in moments.items():
            name, key = label.split("/", 1)
            getattr(self, name)[key] = np.asarray(value, dtype=np.float64)
        self.steps = {HeadGroup(group): int(count) for group, count in steps.items()}

    def step(self, current: State, averaged: State, trained: Collection[HeadGroup]) -> dict[str, np.ndarray]:
        new = {}
        for group in sorted(set(trained), key=lambda g: g.value):
            self.steps[group] = self.steps.get(group, 0) + 1
        for key, x in current.items():
            group = head_group(key)
            if group not in trained:
                new[key] = np.array(x, copy=True)
                continue
            delta = np.asarray(averaged[key], dtype=np.float64) - x  # the pseudo-gradient, ascent direction
            new[key] = np.asarray(x + self.update(key, delta, self.steps[group]), dtype=x.dtype)
        return new

    def update(self, key: str, delta: np.ndarray, step: int) -> np.ndarray:
        return delta


class ServerMomentum(ServerOptimizer):
    """FedAvgM: v_t = β v_{t-1} + Δ_t (v_1 = Δ_1); x_{t+1} = x_t + η v_t."""

    MOMENTS = ("velocity",)

    def __init__(self, cfg: MomentumConfig) -> None:
        super().__init__(cfg)
        self.velocity: dict[str, np.ndarray] = {}

    def update(self, key: str, delta: np.ndarray, step: int) -> np.ndarray:
        previous = self.velocity.get(key)
        self.velocity[key] = (
            delta if previous is None or self.cfg.momentum == 0 else self.cfg.momentum * previous + delta
        )
        return self.cfg.lr * self.velocity[key]


class ServerAdam(ServerOptimizer):
    """FedAdam: m_t = β1 m + (1-β1) Δ; v_t = β2 v + (1-β2) Δ²; x += η_t m_t / (√v_t + τ),
    with Flower's η_t = η √(1-β2^{t+1}) / (1-β1^{t+1})."""

    MOMENTS = ("first", "second")

    def __init__(self, cfg: AdaptiveConfig) -> None:
        super().__init__(cfg)
        self.first: dict[str, np.ndarray] = {}
        self.second: dict[str, np.ndarray] = {}

    def update(self, key: str, delta: np.ndarray, step: int) -> np.ndarray:
        beta_1 = self.cfg.beta_1
        self.first[key] = beta_1 * self.first.get(key, 0.0) + (1 - beta_1) * delta
        self.second[key] = self.second_moment(self.second.get(key, np.zeros_like(delta)), delta)
        return self.learning_rate(step) * self.first[key] / (np.sqrt(self.second[key]) + self.cfg.tau)

    def second_moment(self, previous: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.cfg.beta_2 * previous + (1 - self.cfg.beta_2) * delta**2

    def learning_rate(self, step: int) -> float:
        beta_1, beta_2 = self.cfg.beta_1, self.cfg.beta_2
        return self.cfg.lr * np.sqrt(1 - beta_2 ** (step + 1.0)) / (1 - beta_1 ** (step + 1.0))


class ServerYogi(ServerAdam):
    """FedYogi: FedAdam with v_t = v - (1-β2) Δ² sign(v - Δ²) (additive, slower-growing second moment),
    and no bias correction."""

    def second_moment(self, previous: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return previous - (1 - self.cfg.beta_2) * delta**2 * np.sign(previous - delta**2)

    def learning_rate(self, step: int) -> float:
        return self.cfg.lr


class ServerAdagrad(ServerOptimizer):
    """FedAdagrad: v_t = v_{t-1} + Δ²; x += η Δ / (√v_t + τ) (Flower's, with its β1 = 0)."""

    MOMENTS = ("second",)

    def __init__(self, cfg: AdagradConfig) -> None:
        super().__init__(cfg)
        self.second: dict[str, np.ndarray] = {}

    def update(self, key: str, delta: np.ndarray, step: int) -> np.ndarray:
        self.second[key] = self.second.get(key, np.zeros_like(delta)) + delta**2
        return self.cfg.lr * delta / (np.sqrt(self.second[key]) + self.cfg.tau)
