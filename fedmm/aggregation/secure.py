"""Secure aggregation's arithmetic (plain numpy): the vector a hospital masks, and how the server reads the
unmasked sum of those vectors as the round's average.

Hospital i sends, masked (SecAgg+, `fedmm.strategies.secagg`), for every array k of the heads it received,
in sorted key order,

    (w_{g(k),i} / W) · (θ_{k,i} − received_k),

then one array of its weights per head group, w_{g,i} / W. Here w_{g,i} is its weight for head group g:
its training-set size for every group (FedAvg), or the samples that trained g (modality-aware); it is 0
for a hospital that sent no update (late, or at its privacy budget). W is the protocol's `max_weight`.
The server unmasks only the sum over hospitals, S_k and C_g, and takes

    received_k + S_k / C_{g(k)}     (a group with C_g = 0 keeps received_k),

the weighted mean `RunningAverage` computes from the individual replies. What the server learns: this
average, the per-group sums of weights (how many samples trained each head this round, all hospitals
together) and who answered; never one hospital's heads, weights or loss.

Quantization (Flower's `quantize`): every entry is clipped to [-R, R] (R = `clipping_range`) and
stochastically rounded to a grid of step 2R/Q (Q = `quantization_range`), so with n hospitals each
coordinate of S_k is off by less than n·2R/Q, and the average by less than n·2R/Q / C_g
(`average_error_bound`). Entries beyond R are clipped: the result is exact up to that error only while
every |w/W · Δ| ≤ R.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from fedmm.models.heads import HeadGroup, head_group

GROUPS = tuple(HeadGroup)  # the order of the weights array


def hospital_vector(shared: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray],
                    weights: Mapping[HeadGroup, float], max_weight: float) -> list[np.ndarray]:
    """What one hospital masks: its weighted update per array (sorted keys), then its weights per group."""
    scaled = {group: weights.get(group, 0.0) / max_weight for group in GROUPS}
    update = [scaled[head_group(key)] * (np.asarray(shared[key], np.float64) - np.asarray(received[key], np.float64))
              for key in sorted(received)]
    return [*update, np.array([scaled[group] for group in GROUPS])]


class SecureSum:
    """The round's average from the unmasked sum of every hospital's `hospital_vector` (the `Average`
    interface a strategy's server optimizer steps from; hospitals cannot be added one at a time). With
    `planned` (client-level DP, every weight 1): client-level DP's fixed-denominator average."""

    def __init__(self, current: Mapping[str, np.ndarray], summed: Sequence[np.ndarray], added: int,
                 max_weight: float, planned: int | None = None) -> None:
        *updates, totals = summed
        self.current, self.added, self.max_weight = current, added, max_weight
        self.planned = planned  # client-level DP: current + Σ Δ / m for the planned m (every weight is 1)
        self.sums = dict(zip(sorted(current), updates, strict=True))
        # Below half a sample, no hospital trained the group (quantization leaves a tiny residue).
        self.totals = {group: float(total) for group, total in zip(GROUPS, totals) if total * max_weight >= 0.5}

    def add(self, state, weight: float = 0.0, counts=None) -> None:
        raise TypeError("a secure sum is unmasked as a whole, never one hospital at a time")

    def trained(self) -> set[HeadGroup]:
        return set(self.totals)

    def weight(self, group: HeadGroup) -> float:
        return self.totals.get(group, 0.0)

    def result(self) -> dict[str, np.ndarray]:
        averaged = {}
        for key, value in self.current.items():
            if self.planned is not None:
                averaged[key] = np.asarray(value + self.sums[key] * self.max_weight / self.planned, dtype=value.dtype)
                continue
            total = self.totals.get(head_group(key))
            step = self.sums[key] / total if total else 0.0
            averaged[key] = np.asarray(value + step, dtype=value.dtype)
        return averaged


def average_error_bound(hospitals: int, clipping_range: float, quantization_range: int, total_weight: float) -> float:
    """The largest error of one averaged coordinate from quantization: n·(2R/Q) / C (C = Σ w/W of its group)."""
    return hospitals * 2 * clipping_range / quantization_range / total_weight
