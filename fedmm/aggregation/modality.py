"""Aggregation math on plain arrays, testable without Flower.

Accumulation is in float64 in a fixed order (callers sort by hospital id), so the same inputs give
bit-identical outputs whatever order the replies arrived in.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from fedmm.models.heads import HeadGroup, head_group

State = Mapping[str, np.ndarray]


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """FedAvg (McMahan et al., 2017): sum_k w_k * theta_k / sum_k w_k, for every array."""
    total = float(sum(weights))
    if not states or total <= 0:
        raise ValueError("weighted_average needs at least one state with a positive weight")
    averaged = {}
    for key, reference in states[0].items():
        accumulator = np.zeros(reference.shape, dtype=np.float64)
        for state, weight in zip(states, weights):
            accumulator += float(weight) * state[key]
        averaged[key] = np.asarray(accumulator / total, dtype=reference.dtype)  # asarray: 0-d stays an array
    return averaged


def modality_weighted_average(current: State, states: Sequence[State],
                              group_counts: Sequence[Mapping[HeadGroup, float]]) -> dict[str, np.ndarray]:
    """Average each head group only over the hospitals that trained it, weighted by the samples they used.

    A group that no hospital in `states` trained keeps its value from `current` (the global model),
    so an image-only hospital never dilutes the report head, and vice versa.
    """
    averaged = {}
    for key, value in current.items():
        group = head_group(key)
        weights = [float(counts.get(group, 0.0)) for counts in group_counts]
        if sum(weights) <= 0:
            averaged[key] = np.array(value, copy=True)
            continue
        accumulator = np.zeros(value.shape, dtype=np.float64)
        for state, weight in zip(states, weights):
            accumulator += weight * state[key]
        averaged[key] = np.asarray(accumulator / sum(weights), dtype=value.dtype)
    return averaged
