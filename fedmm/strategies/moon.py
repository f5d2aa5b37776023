"""MOON: FedAvg whose hospitals add a model-contrastive term to their local objective.

Li, He and Song, 2021, "Model-Contrastive Federated Learning" (CVPR). For each sample the embedding z of
the model being trained is pulled toward the global model's embedding z_glob and pushed from the
hospital's previous local model's z_prev:

    ℓ_con = -log( exp(sim(z, z_glob)/τ) / (exp(sim(z, z_glob)/τ) + exp(sim(z, z_prev)/τ)) ),

added with weight μ to the hospital's InfoNCE. The heads already output L2-normalized embeddings, so sim
is their dot product. Each head has its own term (image embeddings of the batch's rows with an image,
report embeddings of those with a report), averaged over the heads present in the batch. The previous
local model is the one the hospital trained last time it was sampled (its private state, equal to what it
sent then); before its first round it is the global model, which makes the term constant (no gradient),
as in the reference code's first round.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from fedmm.config import ConfigError
from fedmm.models.heads import ContrastiveHeads, HeadGroup
from fedmm.strategies.fedavg import build_averaging
from fedmm.strategies.spec import StrategySpec, register
from fedmm.training.local import Batch, Regularizer
from fedmm.training.updates import LocalStep, LocalUpdate, StateDict, snapshot


@dataclass(frozen=True)
class MoonOptions:
    mu: float  # μ: weight of the model-contrastive term next to InfoNCE
    temperature: float  # τ of the model-contrastive softmax


def model_contrastive_loss(z: torch.Tensor, z_global: torch.Tensor, z_previous: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """MOON's ℓ_con, averaged over rows; z, z_global, z_previous: (B, E), L2-normalized."""
    logits = torch.stack([(z * z_global).sum(-1), (z * z_previous).sum(-1)], dim=1) / temperature  # (B, 2)
    return nn.functional.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))


def frozen_embedder(heads: ContrastiveHeads, state: StateDict, group: HeadGroup):
    """features -> the embeddings that `state`'s head `group` gives them, without gradient (the model in
    `heads` is only borrowed for its structure)."""
    module = getattr(heads, group.value)
    prefix = group.value + "."
    weights = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}

    @torch.no_grad()
    def embed(features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(functional_call(module, weights, (features,)), dim=-1)

    return embed


def moon_term(heads: ContrastiveHeads, received: StateDict, previous: StateDict, options: MoonOptions,
              device: torch.device) -> Regularizer:
    """μ · ℓ_con per head, averaged over the heads with rows in the batch."""
    global_state = {key: value.to(device) for key, value in received.items()}
    previous_state = {key: value.to(device) for key, value in previous.items()}
    sides = [(HeadGroup.IMAGE, "image_features"), (HeadGroup.REPORT, "report_features")]
    embedders = {group: (frozen_embedder(heads, global_state, group), frozen_embedder(heads, previous_state, group))
                 for group, _ in sides}

    def term(model: ContrastiveHeads, batch: Batch) -> torch.Tensor:
        losses = []
        for group, name in sides:
            features = getattr(batch, name)
            if not len(features):
                continue
            embed = model.embed_images if group is HeadGroup.IMAGE else model.embed_reports
            to_global, to_previous = embedders[group]
            losses.append(model_contrastive_loss(embed(features), to_global(features), to_previous(features),
                                                 options.temperature))
        return options.mu * torch.stack(losses).mean() if losses else torch.zeros((), device=device)

    return term


def moon_update(step: LocalStep, received: StateDict, personal: StateDict | None) -> LocalUpdate:
    """FedAvg's local step plus μ·ℓ_con; the trained heads are sent and kept as the next previous model."""
    step.heads.load_state_dict(received)
    previous = personal if personal is not None else received
    result = step.train(step.heads, regularizer=moon_term(step.heads, received, previous, step.options, step.device))
    trained = snapshot(step.heads)
    return LocalUpdate(trained, trained, result)


def check(cfg, options: MoonOptions) -> None:
    if options.mu < 0:
        raise ConfigError(f"strategy.mu={options.mu} must be >= 0")
    if options.temperature <= 0:
        raise ConfigError(f"strategy.temperature={options.temperature} must be positive")


SPEC = register(StrategySpec(
    name="moon",
    description="MOON (Li, He and Song, 2021): FedAvg plus a model-contrastive term (global vs previous local)",
    build_server=lambda cfg, options, data, roster: build_averaging(cfg, roster),
    local_update=moon_update,
    averages_weights=True,
    robust_aggregation=True,
    keeps_private_state=True,
    options=MoonOptions,
    check=check,
))
