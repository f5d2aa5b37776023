"""Federated distillation on a reference set: hospitals send embeddings of public items, not weights.

In the spirit of CreamFL (Yu et al., 2023, "Multimodal Federated Learning via Contrastive
Representation Ensemble", ICLR). Each round:
1. the server embeds the reference set with the global heads and sends those embeddings (R x E per
   modality) to the sampled hospitals, as a `train.distill` message;
2. each hospital trains its own heads (kept in its state) on its private pairs, pulled toward the
   global reference embeddings, and replies with its embeddings of the reference items of the
   modalities it holds: an image-only hospital sends image embeddings, a report-only one report
   embeddings;
3. the server ensembles them per modality (weights ∝ samples of that modality, times a quality score
   on the reference set when `distill.quality_weighting`) and distills the ensemble into the global heads;
4. with `distill.server_contrastive_epochs`, the server then trains the global heads on the reference set's
   own pairs (symmetric InfoNCE), as CreamFL's server trains its global model on the public data at the
   start of each round (FLAIR-THU/CreamFL, `MMFL.train`). Off by default: the global heads then learn only
   from the hospitals.
The math is in `fedmm.aggregation.ensemble` and `fedmm.training.distill`.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedmm import protocol as keys
from fedmm.aggregation.ensemble import ensemble_targets, ensemble_weights, quality_score
from fedmm.config import ConfigError, TrainConfig
from fedmm.federation import SplitTensors
from fedmm.models.heads import ContrastiveHeads, build_heads
from fedmm.seeding import DISTILL_STREAM, derive_seed
from fedmm.strategies.base import HospitalFedAvg
from fedmm.strategies.roster import hospital_of
from fedmm.strategies.spec import Exchange, StrategySpec, register
from fedmm.training.distill import ReferenceEmbeddings, distill_heads, embed_reference
from fedmm.training.local import train_heads
from fedmm.training.updates import LocalStep, StateDict

DISTILL_MESSAGE = "train.distill"


@dataclass(frozen=True)
class DistillConfig:
    """`strategy.distill` of configs/strategy/feddistill.yaml."""

    weight: float  # client pull of its reference embeddings toward the global ones
    server_epochs: int  # epochs over the reference set when distilling the ensemble into the global heads
    server_lr: float
    server_contrastive_epochs: int  # then InfoNCE on the reference pairs (CreamFL's global training); 0: none
    quality_weighting: bool  # weight each hospital by its reference-set alignment (CreamFL-style)
    chunk_size: int  # rows per similarity block; memory ~ chunk_size^2, whatever the reference size


@dataclass(frozen=True)
class FedDistillOptions:
    distill: DistillConfig


class FedDistill(HospitalFedAvg):
    can_fold_on_arrival = False  # its replies are embeddings, combined in its own aggregate_train
    train_message_type = DISTILL_MESSAGE

    def __init__(self, *args, heads: ContrastiveHeads, reference: SplitTensors, distill: DistillConfig,
                 train: TrainConfig, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.heads, self.reference, self.distill, self.train = heads, reference, distill, train
        self.global_embeddings: ReferenceEmbeddings | None = None
        self.scale = 1.0

    def train_payload(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """The global heads' embeddings of the reference set, instead of the heads themselves."""
        self.heads.load_state_dict(arrays.to_torch_state_dict())
        self.global_embeddings = embed_reference(self.heads, self.reference)
        self.scale = self.heads.scale().item()
        return ArrayRecord({keys.IMAGE_EMBEDDINGS: Array(self.global_embeddings.image.numpy()),
                            keys.REPORT_EMBEDDINGS: Array(self.global_embeddings.report.numpy())})

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ordered = self.roster.answered(server_round, replies, "training")
        qualities: dict[int, dict[str, float]] = {}
        targets = {}
        for modality, key, count_key, other in (
                ("image", keys.IMAGE_EMBEDDINGS, keys.NUM_IMAGE_USED, self.global_embeddings.report),
                ("report", keys.REPORT_EMBEDDINGS, keys.NUM_REPORT_USED, self.global_embeddings.image)):
            holders = [reply for reply in ordered if key in reply.content[keys.ARRAYS]]
            if not holders:
                targets[modality] = None  # nobody sampled holds this modality: no target this round
                continue
            embeddings = [torch.from_numpy(reply.content[keys.ARRAYS][key].numpy()) for reply in holders]  # (R, E)
            scores = [quality_score(e, other, self.scale, self.distill.chunk_size) for e in embeddings]
            for reply, score in zip(holders, scores):
                qualities.setdefault(hospital_of(reply), {})[f"quality-{modality}"] = score
            counts = [float(reply.content[keys.METRICS][count_key]) for reply in holders]
            weights = ensemble_weights(counts, scores if self.distill.quality_weighting else None)
            for reply, weight in zip(holders, weights.tolist()):
                qualities[hospital_of(reply)][f"weight-{modality}"] = weight
            targets[modality] = ensemble_targets(embeddings, weights)
        self.roster.log_train(server_round, ordered, self.download_bytes, extra=qualities)
        self.heads.load_state_dict(self.current_arrays.to_torch_state_dict())
        distill_loss = distill_heads(
            self.heads, self.reference, ReferenceEmbeddings(targets["image"], targets["report"]),
            self.distill.server_epochs, self.distill.server_lr, self.train.batch_size,
            derive_seed(self.roster.seed, DISTILL_STREAM, server_round), next(self.heads.parameters()).device)
        metrics = self.train_metrics_aggr_fn([reply.content for reply in ordered], self.weighted_by_key)
        metrics["distill-loss"] = distill_loss
        if self.distill.server_contrastive_epochs:
            metrics["reference-loss"] = train_heads(
                self.heads, self.reference, self.train, derive_seed(self.roster.seed, DISTILL_STREAM, server_round, 1),
                next(self.heads.parameters()).device, epochs=self.distill.server_contrastive_epochs,
                optimizer=lambda parameters: torch.optim.Adam(parameters, lr=self.distill.server_lr)).loss
        state = {key: Array(value.detach().cpu().numpy()) for key, value in self.heads.state_dict().items()}
        return ArrayRecord(state), metrics

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config["distill-weight"] = self.distill.weight
        return super().configure_train(server_round, arrays, config, grid)


def build_server(cfg, options: FedDistillOptions, data, roster) -> FedDistill:
    from fedmm.federation import load_reference
    from fedmm.models.features import resolve_device

    heads = build_heads(data.image_dim, data.report_dim, cfg.heads, seed=0).to(resolve_device(cfg.device))
    return FedDistill(roster, heads=heads, reference=load_reference(cfg), distill=options.distill, train=cfg.train)


def private_model(step: LocalStep, received: StateDict, personal: StateDict | None) -> ContrastiveHeads:
    """The hospital's private heads (before its first training: the run's initial heads)."""
    step.personal_heads.load_state_dict(personal if personal is not None else step.initial_state)
    return step.personal_heads


def check(cfg, options: FedDistillOptions) -> None:
    distill = options.distill
    for name, value in (("server_epochs", distill.server_epochs), ("server_lr", distill.server_lr),
                        ("chunk_size", distill.chunk_size)):
        if value <= 0:
            raise ConfigError(f"strategy.distill.{name}={value} must be positive")
    if distill.server_contrastive_epochs < 0:
        raise ConfigError(f"strategy.distill.server_contrastive_epochs={distill.server_contrastive_epochs} must be "
                          ">= 0 (0: the server only distills)")
    if distill.weight < 0:
        raise ConfigError(f"strategy.distill.weight={distill.weight} must be >= 0")
    if cfg.missing.handler != "ignore":
        raise ConfigError(f"missing.handler={cfg.missing.handler!r} does not apply to feddistill, whose unimodal "
                          "hospitals already take part through reference embeddings of the modality they hold; "
                          "use missing=ignore with feddistill")


SPEC = register(StrategySpec(
    name="feddistill",
    description="Federated distillation (CreamFL-style, Yu et al., 2023): hospitals send reference-set embeddings",
    build_server=build_server,
    keeps_private_state=True,
    personal_model=private_model,
    exchanges=Exchange.EMBEDDINGS,
    needs_reference=True,
    options=FedDistillOptions,
    check=check,
))
