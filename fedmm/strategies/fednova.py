"""FedNova: FedAvg with each hospital's update normalized by the local steps it took.

Wang, Liu, Liang, Joshi and Poor, 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization" (NeurIPS). A hospital with more data takes more local steps per epoch, so plain
FedAvg drifts toward the large hospitals' optimum (the `imbalanced` scenario's size skew). FedNova
averages the per-step updates d_i = (y_i - x) / τ_i and rescales by the effective step count:

    x_new = x + τ_eff · Σ_i p_i d_i,   τ_eff = Σ_i p_i τ_i,   p_i = w_i / Σ_j w_j

with τ_i the hospital's local steps (`train-steps`; a_i = τ_i is the paper's form for local SGD without
momentum, and fedmm's local optimizer is AdamW, so it is the step-count normalization rather than the
exact one) and w_i its training-set size, or in the modality-aware form its samples for each head
group. A hospital that took no step contributes nothing. With equal τ_i it is FedAvg exactly.
"""

from collections.abc import Mapping

import numpy as np
from flwr.app import Message

from fedmm import protocol as keys
from fedmm.aggregation.modality import MODALITY, SIZE, State
from fedmm.models.heads import HeadGroup, head_group
from fedmm.strategies.base import DecodedOnRead, HospitalFedAvg
from fedmm.strategies.fedavg import averaging_update, build_averaging
from fedmm.strategies.spec import NoOptions, PrivacyMode, StrategySpec, register


class NormalizedAverage:
    """FedNova's average, one hospital at a time (the `Average` protocol, plus the local steps)."""

    def __init__(self, current: State, mode: str) -> None:
        self.current, self.mode = current, mode
        self.sums = {key: np.zeros(value.shape, dtype=np.float64) for key, value in current.items()}  # Σ w d
        self.weights = {key: 0.0 for key in current}  # Σ w
        self.steps = {key: 0.0 for key in current}  # Σ w τ
        self.added = 0

    def add(self, state: State, weight: float = 0.0, counts: Mapping[HeadGroup, float] | None = None,
            steps: float = 0.0) -> None:
        self.added += 1
        if steps <= 0:  # no step: no normalized update
            return
        for key, x in self.current.items():
            w = float(weight) if self.mode == SIZE else float((counts or {}).get(head_group(key), 0.0))
            if w <= 0:
                continue
            self.sums[key] += w * (np.asarray(state[key], dtype=np.float64) - x) / steps
            self.weights[key] += w
            self.steps[key] += w * steps

    def trained(self) -> set[HeadGroup]:
        return {head_group(key) for key, total in self.weights.items() if total > 0}

    def result(self) -> dict[str, np.ndarray]:
        if not self.added:
            raise ValueError("an average needs at least one hospital")
        new = {}
        for key, x in self.current.items():
            total = self.weights[key]
            if total <= 0:  # nobody stepped on it: keep the global value
                new[key] = np.array(x, copy=True)
                continue
            effective_steps = self.steps[key] / total  # τ_eff
            new[key] = np.asarray(x + effective_steps * self.sums[key] / total, dtype=x.dtype)
        return new


class FedNova(HospitalFedAvg):
    def new_average(self) -> NormalizedAverage:
        assert self.current_arrays is not None, "configure_train stores the global model first"
        current = {key: array.numpy() for key, array in self.current_arrays.items()}
        return NormalizedAverage(current, MODALITY if self.modality_aware else SIZE)

    def fold(self, average: NormalizedAverage, reply: Message) -> None:
        steps = float(reply.content[keys.METRICS][keys.TRAIN_STEPS])
        average.add(DecodedOnRead(reply.content[keys.ARRAYS]), *self.reply_weights(reply), steps=steps)


SPEC = register(StrategySpec(
    name="fednova",
    description="FedNova (Wang et al., 2020): updates normalized by each hospital's local steps, then averaged",
    build_server=lambda cfg, options, data, roster: build_averaging(cfg, roster, strategy_class=FedNova),
    local_update=averaging_update,
    privacy=frozenset({PrivacyMode.SAMPLE}),
    averages_weights=True,
    resumable=True,
    options=NoOptions,
))
