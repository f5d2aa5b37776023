"""Model selection: which round's model a run reports, chosen on a validation split, never on the test set.

With `early_stopping.metric` set, the server's global test pool is split once per seed into a validation
split (`validation_fraction` of its studies) and the test set (the rest). Every evaluation round measures
the metric on the validation split; the best round so far (ties: the earlier) is kept, its heads saved
as `heads-best.safetensors` as soon as it is found. After `patience` evaluations without improvement the
run stops. The summary then reports the test metrics of the selected round (`evaluated_round`), and
`heads.safetensors` holds its heads; the last round's heads are kept as `heads-last.safetensors`.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmm.config import ConfigError, EarlyStoppingConfig, ExperimentConfig
from fedmm.federation import SplitTensors
from fedmm.seeding import VALIDATION_STREAM, derive_seed
from fedmm.strategies.roster import RunStopped

BEST_HEADS = "heads-best.safetensors"
LAST_HEADS = "heads-last.safetensors"


class EarlyStopped(RunStopped):
    """The validation metric has not improved for `patience` evaluations; the selected round is reported."""


def server_splits(cfg: ExperimentConfig, pool: SplitTensors) -> tuple[SplitTensors | None, SplitTensors]:
    """(validation, test) from the global test pool: a seeded share for validation when early stopping is on,
    else (None, the whole pool)."""
    if cfg.early_stopping.metric is None:
        return None, pool
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(derive_seed(cfg.seed, VALIDATION_STREAM)))
    count = round(cfg.early_stopping.validation_fraction * len(pool))
    validation, test = pool.rows(order[:count].sort().values), pool.rows(order[count:].sort().values)
    metric = cfg.early_stopping.metric
    k = int(metric.split("@")[1]) if "@" in metric else 1  # R@k and P@k need more than k pairs, the rest two
    pairs = int(validation.paired_mask.sum())
    if pairs <= k:
        raise ConfigError(f"early_stopping.metric={metric} needs more than {k} paired studies in the validation "
                          f"split, which holds {pairs} of the {len(pool)} in the global test pool; raise "
                          "early_stopping.validation_fraction, choose another metric, or set "
                          "early_stopping.metric=null")
    return validation, test


@dataclass
class ModelSelection:
    """The best round so far on the validation metric, and whether patience has run out."""

    settings: EarlyStoppingConfig
    best_round: int | None = None
    best_value: float = float("-inf")
    since_best: int = 0  # evaluations since the best one

    @property
    def metric(self) -> str:
        assert self.settings.metric is not None
        return self.settings.metric

    def observe(self, server_round: int, validation: Mapping[str, float]) -> bool:
        """Take one evaluation's validation metrics; True when this round is the best so far."""
        value = validation.get(self.metric)
        if value is None:
            raise ValueError(f"early_stopping.metric={self.metric!r} is not measured on the validation split; "
                             f"measured: {sorted(name for name in validation if not name.startswith('chance_'))}")
        if value > self.best_value:
            self.best_round, self.best_value, self.since_best = server_round, value, 0
            return True
        self.since_best += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.settings.patience is not None and self.since_best >= self.settings.patience

    def stop_reason(self) -> str:
        return (f"early stopping: validation {self.metric} has not improved for {self.since_best} evaluations "
                f"(best {self.best_value:.4f} at round {self.best_round})")

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "selected_round": self.best_round, "validation_value": self.best_value,
                "patience": self.settings.patience, "validation_fraction": self.settings.validation_fraction}


def save_heads(state: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({key: value.detach().cpu().contiguous() for key, value in state.items()}, path)
