"""Missing-modality handlers: how image-only and report-only samples take part in local training.

A handler is chosen by name (`missing.handler`) and prepared once per round and hospital from the model
the hospital starts the round with and the non-private reference set (`build_handler`). It decides
which rows train (`rows`) and adds a term for the unimodal ones (`unimodal_loss`). Every strategy whose
local step is `train_heads` (the averaging family, FedProx, FedPer, FedRep, Ditto, finetune) and the
`local`/`centralized` references use it; nothing extra leaves the hospital.
"""

from collections.abc import Callable

import torch

from fedmm.config import ConfigError, MissingModalityConfig
from fedmm.federation import SplitTensors
from fedmm.models.heads import ContrastiveHeads
from fedmm.training.missing.base import (
    IgnoreUnimodal,
    MissingModalityHandler,
    TrainingRows,
    heads_device,
    paired_rows,
)
from fedmm.training.missing.prototype import PrototypeAnchoring
from fedmm.training.missing.retrieval import RetrievalImputation

# name -> (cfg, heads at the start of the round, the hospital's split, reference set, seed) -> handler
HandlerBuilder = Callable[[MissingModalityConfig, ContrastiveHeads, SplitTensors, SplitTensors | None, int],
                          MissingModalityHandler]
MISSING_HANDLERS: dict[str, HandlerBuilder] = {
    "ignore": lambda cfg, heads, data, reference, seed: IgnoreUnimodal(paired_rows(data).to(heads_device(heads))),
    "prototype": PrototypeAnchoring.prepare,
    "retrieval": RetrievalImputation.prepare,
}

# Called with the heads as a training starts (their state then is the round's received model): the handler.
HandlerFactory = Callable[[ContrastiveHeads], MissingModalityHandler]

__all__ = ["MISSING_HANDLERS", "HandlerFactory", "IgnoreUnimodal", "MissingModalityHandler", "TrainingRows",
           "build_handler", "check_missing", "handler_factory", "needs_reference", "paired_rows"]


def check_missing(cfg: MissingModalityConfig) -> None:
    if cfg.handler not in MISSING_HANDLERS:
        raise ConfigError(f"missing.handler={cfg.handler!r} is unknown; valid: {sorted(MISSING_HANDLERS)}")
    if cfg.weight < 0:
        raise ConfigError(f"missing.weight={cfg.weight} must be >= 0")
    if cfg.num_prototypes < 2:
        raise ConfigError(f"missing.num_prototypes={cfg.num_prototypes} must be at least 2 (a prototype needs rivals)")
    if cfg.temperature <= 0:
        raise ConfigError(f"missing.temperature={cfg.temperature} must be positive")
    if cfg.retrieval_k < 1:
        raise ConfigError(f"missing.retrieval_k={cfg.retrieval_k} must be at least 1")


def needs_reference(cfg: MissingModalityConfig) -> bool:
    return cfg.handler != "ignore"


def build_handler(cfg: MissingModalityConfig, heads: ContrastiveHeads, data: SplitTensors,
                  reference: SplitTensors | None, seed: int) -> MissingModalityHandler:
    """The round's handler for `data`; `heads` hold the model the hospital starts the round from. It is
    read, not modified: targets are fixed for the round, like pseudo-labels."""
    check_missing(cfg)
    if needs_reference(cfg) and reference is None:
        raise ValueError(f"missing.handler={cfg.handler!r} needs the reference set")
    with torch.no_grad():
        return MISSING_HANDLERS[cfg.handler](cfg, heads, data, reference, seed)


def handler_factory(cfg: MissingModalityConfig, data: SplitTensors, reference: SplitTensors | None,
                    seed: int) -> HandlerFactory | None:
    """What a local training calls to prepare its handler; None for `ignore` (pairs only)."""
    if not needs_reference(cfg):
        return None
    return lambda heads: build_handler(cfg, heads, data, reference, seed)
