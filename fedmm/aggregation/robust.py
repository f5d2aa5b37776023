"""Robust aggregation: the coordinate-wise median, the trimmed mean and (Multi-)Krum, per head group.

- median: Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates"
  (ICML), coordinate-wise median; Flower's `FedMedian`.
- trimmed_mean: the same paper's coordinate-wise β-trimmed mean; Flower's `FedTrimmedAvg` (`trim_mean`).
- krum / multikrum: Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant
  Gradient Descent" (NeurIPS); El Mhamdi et al., 2018 (Multi-Krum). Each update is scored by the summed
  squared distances to its n - f - 2 nearest; the m lowest-scoring ones are averaged (Krum: m = 1).
  Flower's `select_multikrum`.

The math is Flower's own (imported, not rewritten). What fedmm adds is the modality-aware form: each
head group is aggregated over the hospitals that trained it (image head over the hospitals with images,
and so on), as `RunningAverage` does for the mean, so an image-only hospital is neither an outlier nor a
vote on the report head. `RobustAverage` has `RunningAverage`'s interface, so every averaging strategy
(and its server optimizer) takes it unchanged.
"""

from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum

from fedmm.aggregation.modality import MODALITY, SIZE, State
from fedmm.config import AggregatorConfig, ConfigError
from fedmm.models.heads import HeadGroup, head_group


def median(layers: np.ndarray, weights: np.ndarray, cfg: AggregatorConfig) -> np.ndarray:
    """(n, ...) stacked arrays -> their coordinate-wise median (FedMedian; unweighted)."""
    return np.median(layers, axis=0)


def trimmed_mean(layers: np.ndarray, weights: np.ndarray, cfg: AggregatorConfig) -> np.ndarray:
    """The coordinate-wise mean after cutting int(β·n) values at each end (FedTrimmedAvg; unweighted)."""
    return trim_mean(layers, cfg.trim_fraction)


# name -> (stacked arrays, weights, cfg) -> aggregate, for the coordinate-wise rules; Krum selects whole updates.
COORDINATE_WISE: dict[str, Callable[[np.ndarray, np.ndarray, AggregatorConfig], np.ndarray]] = {
    "median": median,
    "trimmed_mean": trimmed_mean,
}
SELECTING = ("krum", "multikrum")
AGGREGATORS = ("mean", *COORDINATE_WISE, *SELECTING)  # `aggregator.name`; mean: `RunningAverage`


def check_aggregator(cfg: AggregatorConfig) -> None:
    if cfg.name not in AGGREGATORS:
        raise ConfigError(f"aggregator.name={cfg.name!r} is unknown; valid: {list(AGGREGATORS)}")
    if not 0 <= cfg.trim_fraction < 0.5:
        raise ConfigError(f"aggregator.trim_fraction={cfg.trim_fraction} must lie in [0, 0.5): it is cut at each end")
    if cfg.num_malicious < 0:
        raise ConfigError(f"aggregator.num_malicious={cfg.num_malicious} must be >= 0")
    if cfg.num_selected is not None and cfg.num_selected < 1:
        raise ConfigError(f"aggregator.num_selected={cfg.num_selected} must be >= 1, or null (n - f)")


def selected_count(cfg: AggregatorConfig, num_updates: int) -> int:
    """How many updates (Multi-)Krum averages among `num_updates`: 1, m, or n - f."""
    if cfg.name == "krum":
        return 1
    wanted = cfg.num_selected if cfg.num_selected is not None else num_updates - cfg.num_malicious
    return max(1, min(num_updates, wanted))


class RobustAverage:
    """`RunningAverage`'s interface with a robust rule: replies are kept (each array copied once) and
    aggregated at `result`, per head group in the `modality` mode, over all arrays together otherwise."""

    def __init__(self, current: State, mode: str, cfg: AggregatorConfig) -> None:
        if mode not in (SIZE, MODALITY):
            raise ValueError(f"robust aggregation is not defined for the {mode!r} average")
        self.current, self.mode, self.cfg = current, mode, cfg
        self.states: list[dict[str, np.ndarray]] = []
        self.weights: list[dict[HeadGroup, float]] = []  # per hospital: its weight for each head group
        self.added = 0
        self.selected: dict[HeadGroup, list[int]] = {}  # (Multi-)Krum: positions of the updates it kept, per group

    def add(self, state: State, weight: float = 0.0, counts: Mapping[HeadGroup, float] | None = None) -> None:
        self.states.append({key: np.array(state[key]) for key in self.current})
        self.weights.append({group: float(weight) if self.mode == SIZE else float((counts or {}).get(group, 0.0))
                             for group in HeadGroup})
        self.added += 1

    def trained(self) -> set[HeadGroup]:
        if self.mode != MODALITY:
            return set(HeadGroup)
        return {group for group in HeadGroup if any(w[group] > 0 for w in self.weights)}

    def members(self, group: HeadGroup) -> list[int]:
        """The hospitals that vote on `group`: those that trained it (modality-aware), or every one."""
        return [i for i, w in enumerate(self.weights) if w[group] > 0 or self.mode == SIZE]

    def result(self) -> dict[str, np.ndarray]:
        if not self.added:
            raise ValueError("an average needs at least one hospital")
        groups = list(HeadGroup) if self.mode == MODALITY else [None]  # None: one vote over every array
        averaged: dict[str, np.ndarray] = {}
        for group in groups:
            keys = [key for key in self.current if group is None or head_group(key) == group]
            members = self.members(group or HeadGroup.IMAGE)
            if not keys:
                continue
            if not members:  # nobody trained it: keep the global value
                averaged.update({key: np.array(self.current[key], copy=True) for key in keys})
                continue
            weights = np.array([self.weights[i][group or HeadGroup.IMAGE] for i in members])
            if self.cfg.name in COORDINATE_WISE:
                rule = COORDINATE_WISE[self.cfg.name]
                for key in keys:
                    layers = np.stack([self.states[i][key] for i in members])
                    averaged[key] = np.asarray(rule(layers, weights, self.cfg), dtype=self.current[key].dtype)
            else:
                kept = self.krum(members, keys)
                self.selected[group or HeadGroup.IMAGE] = kept
                kept_weights = np.array([self.weights[i][group or HeadGroup.IMAGE] for i in kept])
                if kept_weights.sum() <= 0:
                    kept_weights = np.ones(len(kept))
                for key in keys:
                    total = sum(w * self.states[i][key].astype(np.float64) for w, i in zip(kept_weights, kept))
                    averaged[key] = np.asarray(total / kept_weights.sum(), dtype=self.current[key].dtype)
        return averaged

    def krum(self, members: list[int], keys: list[str]) -> list[int]:
        """The members (Multi-)Krum keeps, scored on the arrays `keys` with Flower's `select_multikrum`."""
        contents = [RecordDict({"arrays": ArrayRecord({key: Array(self.states[i][key]) for key in keys})})
                    for i in members]
        chosen = select_multikrum(contents, num_malicious_nodes=self.cfg.num_malicious,
                                  num_nodes_to_select=selected_count(self.cfg, len(members)))
        positions = {id(content): member for content, member in zip(contents, members)}
        return sorted(positions[id(content)] for content in chosen)
