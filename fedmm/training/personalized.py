"""Personalized local updates: what a hospital trains, what it sends, and what it keeps (plain PyTorch).

Each returns a `LocalUpdate`: `shared` goes back to the server, `personal` stays in the hospital's
state (Flower's `context.state`) for the next round and never leaves it. `missing` is the hospital's
missing-modality handler (`fedmm.training.missing`); every training below uses it.

- FedPer (Arivazhagan et al., 2019, "Federated Learning with Personalization Layers", arXiv:1912.00818):
  the final layer of each head is private; everything is trained jointly, only the base is averaged.
- FedRep (Collins et al., 2021, "Exploiting Shared Representations for Personalized Federated
  Learning", ICML): the same split, but the private final layers are trained first with the base
  frozen, then the base with the final layers frozen.
- Ditto (Li et al., 2021, "Ditto: Fair and Robust Federated Learning Through Personalization", ICML):
  the global model is trained as in FedAvg; a private full model v is trained on the local objective
  plus (λ/2)·||v - w_global||².
- Local fine-tuning (e.g. Wang et al., 2019, "Federated Evaluation of On-device Personalization",
  arXiv:1910.10252): FedAvg training; before evaluation each hospital fine-tunes a copy of the global
  heads on its own training split.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import torch

from fedmm.config import ExperimentConfig
from fedmm.hospitals import SplitTensors
from fedmm.models.heads import ContrastiveHeads, is_personal_layer
from fedmm.training.local import TrainResult, train_heads
from fedmm.training.missing import HandlerFactory
from fedmm.training.regularizers import proximal_term

StateDict = dict[str, torch.Tensor]


class Personalization(str, Enum):
    NONE = "none"
    FEDPER = "fedper"
    FEDREP = "fedrep"
    DITTO = "ditto"
    FINETUNE = "finetune"
    DISTILL = "distill"  # feddistill: the whole heads are private, only reference embeddings leave


@dataclass
class LocalUpdate:
    shared: StateDict  # sent to the server
    personal: StateDict | None  # kept by the hospital; None: nothing private
    result: TrainResult  # of the training that produced `shared`


def split_personal(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """(shared, personal) parts of a heads state dict, by FedPer's layer split."""
    shared = {k: v for k, v in state.items() if not is_personal_layer(k)}
    return shared, {k: v for k, v in state.items() if is_personal_layer(k)}


def snapshot(heads: ContrastiveHeads) -> StateDict:
    return {key: value.detach().cpu().clone() for key, value in heads.state_dict().items()}


def global_update(heads: ContrastiveHeads, received: StateDict, data: SplitTensors, cfg: ExperimentConfig,
                  seed: int, device: torch.device, proximal_mu: float = 0.0,
                  missing: HandlerFactory | None = None) -> LocalUpdate:
    """FedAvg's local step (FedProx's when `proximal_mu` > 0): train the received heads, send them all."""
    heads.load_state_dict(received)
    anchor = {key: value.to(device) for key, value in received.items()}
    regularizer = (lambda model: proximal_term(model, anchor, proximal_mu)) if proximal_mu > 0 else None
    result = train_heads(heads, data, cfg.train, seed, device, regularizer=regularizer, missing=missing)
    return LocalUpdate(snapshot(heads), None, result)


def fedper_update(heads: ContrastiveHeads, received: StateDict, personal: StateDict, data: SplitTensors,
                  cfg: ExperimentConfig, seed: int, device: torch.device,
                  missing: HandlerFactory | None = None) -> LocalUpdate:
    """Train base and private final layers together; send the base, keep the final layers."""
    heads.load_state_dict(received | personal)
    result = train_heads(heads, data, cfg.train, seed, device, missing=missing)
    shared, personal = split_personal(snapshot(heads))
    return LocalUpdate(shared, personal, result)


def fedrep_update(heads: ContrastiveHeads, received: StateDict, personal: StateDict, data: SplitTensors,
                  cfg: ExperimentConfig, seed: int, device: torch.device,
                  missing: HandlerFactory | None = None) -> LocalUpdate:
    """Private final layers first (`personal.head_epochs`, base frozen), then the base (final layers frozen)."""
    heads.load_state_dict(received | personal)
    train_heads(heads, data, cfg.train, seed, device, epochs=cfg.strategy.personal.head_epochs,
                parameters=list(personal), missing=missing)
    result = train_heads(heads, data, cfg.train, seed + 1, device, parameters=list(received), missing=missing)
    shared, personal = split_personal(snapshot(heads))
    return LocalUpdate(shared, personal, result)


def ditto_update(heads: ContrastiveHeads, personal_heads: ContrastiveHeads, received: StateDict,
                 personal: StateDict | None, data: SplitTensors, cfg: ExperimentConfig, seed: int,
                 device: torch.device, missing: HandlerFactory | None = None) -> LocalUpdate:
    """FedAvg's step on the received heads (sent), and λ-regularized steps on the private model (kept)."""
    update = global_update(heads, received, data, cfg, seed, device, missing=missing)
    personal_heads.load_state_dict(personal if personal is not None else received)  # v starts at w_global
    anchor = {key: value.to(device) for key, value in received.items()}
    weight = cfg.strategy.personal.ditto_lambda
    train_heads(personal_heads, data, cfg.train, seed + 1, device,
                regularizer=lambda model: proximal_term(model, anchor, weight), missing=missing)
    return LocalUpdate(update.shared, snapshot(personal_heads), update.result)


def finetuned(heads: ContrastiveHeads, received: StateDict, data: SplitTensors, cfg: ExperimentConfig,
              seed: int, device: torch.device, missing: HandlerFactory | None = None) -> ContrastiveHeads:
    """`heads` holding the received global heads fine-tuned on this hospital's training split."""
    heads.load_state_dict(received)
    train_heads(heads, data, cfg.train, seed, device, epochs=cfg.strategy.personal.finetune_epochs, missing=missing)
    return heads
