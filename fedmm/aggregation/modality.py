"""Aggregation math on plain arrays, testable without Flower.

Every average is a `RunningAverage`: hospitals are folded in one at a time, in the order the caller
adds them (sorted by hospital id), accumulating in float64 (the fixed-denominator update sum of
client-level DP in the arrays' own dtype). The same inputs give bit-identical outputs whatever order
the replies arrived in, and the server never needs more than one hospital's arrays decoded at once.
"""

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from fedmm.models.heads import HeadGroup, head_group

State = Mapping[str, np.ndarray]

SIZE, MODALITY, UNIFORM = "size", "modality", "uniform"  # how a RunningAverage weighs each hospital


class Average(Protocol):
    """What a round's aggregation offers the strategy: hospitals added one at a time (in hospital-id order),
    then the next global arrays. `RunningAverage` (the mean), `RobustAverage` (median, trimmed mean,
    Krum), FedNova's `NormalizedAverage` and q-FFL's `QFairAverage` provide it."""

    current: State  # the global arrays at the start of the round
    added: int  # hospitals added so far

    def add(self, state: State, weight: float = 0.0, counts: Mapping[HeadGroup, float] | None = None) -> None: ...

    def trained(self) -> set[HeadGroup]:
        """The head groups that moved (a server optimizer steps only those)."""
        ...

    def result(self) -> dict[str, np.ndarray]: ...


class RunningAverage:
    """An average of hospitals' arrays, one hospital at a time.

    - `size`: FedAvg (McMahan et al., 2017), sum_k w_k * theta_k / sum_k w_k for every array, w_k the
      hospital's `weight` (its training-set size).
    - `modality`: each head group averaged only over the hospitals that trained it, weighted by the
      samples they used for it (`counts`); a group nobody trained keeps its value in `current`, so an
      image-only hospital never dilutes the report head, and vice versa.
    - `uniform`: client-level DP's average with a fixed denominator, current + sum_k (theta_k - current)
      / `planned`: one hospital moves it by at most C/m, whoever replies.
    """

    def __init__(self, current: State, mode: str, planned: int | None = None) -> None:
        if mode not in (SIZE, MODALITY, UNIFORM):
            raise ValueError(f"unknown averaging mode {mode!r}")
        if mode == UNIFORM and not planned:
            raise ValueError("a uniform average needs the planned number of hospitals")
        self.current, self.mode, self.planned = current, mode, planned
        self.sums: dict[str, np.ndarray | int] = {}
        self.totals: dict[str, float] = {key: 0.0 for key in current}  # the weights summed per array
        self.added = 0

    def add(self, state: State, weight: float = 0.0, counts: Mapping[HeadGroup, float] | None = None) -> None:
        """Fold in one hospital: its arrays, its size (`size`) or per-group sample counts (`modality`)."""
        for key, value in self.current.items():
            if self.mode == UNIFORM:  # in the arrays' dtype, as client-level DP's clipping bound is stated
                self.sums[key] = self.sums.get(key, 0) + (state[key] - value)
                continue
            w = float(weight) if self.mode == SIZE else float((counts or {}).get(head_group(key), 0.0))
            if key not in self.sums:
                self.sums[key] = np.zeros(value.shape, dtype=np.float64)
            self.sums[key] += w * state[key]
            self.totals[key] += w
        self.added += 1

    def trained(self) -> set[HeadGroup]:
        """The head groups some added hospital trained (every group, but for the modality-aware mode)."""
        if self.mode != MODALITY:
            return set(HeadGroup)
        return {head_group(key) for key, total in self.totals.items() if total > 0}

    def result(self) -> dict[str, np.ndarray]:
        if not self.added:
            raise ValueError("an average needs at least one hospital")
        averaged = {}
        for key, value in self.current.items():
            if self.mode == UNIFORM:
                averaged[key] = np.asarray(value + self.sums[key] / self.planned, dtype=value.dtype)
            elif self.totals[key] > 0:
                averaged[key] = np.asarray(self.sums[key] / self.totals[key], dtype=value.dtype)  # 0-d stays an array
            elif self.mode == MODALITY:
                averaged[key] = np.array(value, copy=True)
            else:
                raise ValueError("weighted_average needs at least one state with a positive weight")
        return averaged


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """FedAvg (McMahan et al., 2017): sum_k w_k * theta_k / sum_k w_k, for every array."""
    if not states:
        raise ValueError("weighted_average needs at least one state with a positive weight")
    average = RunningAverage(states[0], SIZE)
    for state, weight in zip(states, weights):
        average.add(state, weight)
    return average.result()


def modality_weighted_average(current: State, states: Sequence[State],
                              group_counts: Sequence[Mapping[HeadGroup, float]]) -> dict[str, np.ndarray]:
    """Average each head group only over the hospitals that trained it, weighted by the samples they used."""
    average = RunningAverage(current, MODALITY)
    for state, counts in zip(states, group_counts):
        average.add(state, counts=counts)
    return average.result()
