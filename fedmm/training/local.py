"""A hospital's local training of the contrastive heads on its cached features (plain PyTorch)."""

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from fedmm.config import TrainConfig
from fedmm.federation import SplitTensors
from fedmm.models.heads import ContrastiveHeads
from fedmm.models.losses import symmetric_info_nce
from fedmm.simulation.conditions import Clock
from fedmm.training.missing import HandlerFactory, TrainingRows, paired_rows


@dataclass(frozen=True)
class TrainResult:
    """What a hospital reports after local training. The counts weight modality-aware aggregation."""

    loss: float  # mean of InfoNCE plus the unimodal term over the steps taken; nan when no step was possible
    steps: int
    num_paired_used: int  # the hospital's own pairs that entered the contrastive loss (imputed ones excluded)
    num_image_used: int  # samples whose image features trained the image head
    num_report_used: int  # samples whose report features trained the report head
    samples: int  # sample passes: the rows of every step taken, summed (the budget tables compare runs by)

    @classmethod
    def idle(cls) -> "TrainResult":
        """No step taken: nothing to learn from, a spent privacy budget, a missed deadline."""
        return cls(float("nan"), 0, 0, 0, 0, 0)

    def with_extra(self, other: "TrainResult") -> "TrainResult":
        """This result, charged also the sample passes of `other` (a second training phase of the same round,
        such as FedRep's head epochs or Ditto's private model)."""
        return dataclasses.replace(self, samples=self.samples + other.samples)


@dataclass(frozen=True)
class Batch:
    """One training step's rows, for terms that look at the batch (MOON). The features are gathered only
    when a term reads them, so a term that ignores the batch (FedProx's) costs no indexing per step."""

    rows: TrainingRows
    indices: torch.Tensor  # (B,) row indices of this step

    @property
    def image_features(self) -> torch.Tensor:
        """(B_image, D_image): the image features of the batch's rows that train the image head."""
        return self.rows.image_features[self.indices[(self.rows.pair | self.rows.image_only)[self.indices]]]

    @property
    def report_features(self) -> torch.Tensor:
        """(B_report, D_text): the report features of the batch's rows that train the report head."""
        return self.rows.report_features[self.indices[(self.rows.pair | self.rows.report_only)[self.indices]]]


Regularizer = Callable[[ContrastiveHeads, Batch], torch.Tensor]  # an extra loss term on the current heads
GradientCorrection = Callable[[ContrastiveHeads], None]  # edits the gradients before each step (SCAFFOLD)
OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def local_optimizer(parameters: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """The hospitals' optimizer: AdamW with `cfg.lr` and `cfg.weight_decay`, fused (one kernel over all
    parameters: a step of the default heads costs about 2 ms instead of 13-16 ms on one CPU core, the same update
    up to float rounding; benchmarks/step_cost.py)."""
    return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def train_heads(heads: ContrastiveHeads, data: SplitTensors, cfg: TrainConfig, seed: int,
                device: torch.device | str = "cpu", *, epochs: int | None = None,
                parameters: Iterable[str] | None = None, regularizer: Regularizer | None = None,
                missing: HandlerFactory | None = None, correction: GradientCorrection | None = None,
                optimizer: OptimizerFactory | None = None, clock: Clock | None = None) -> TrainResult:
    """Train `heads` in place for `epochs` (default `cfg.local_epochs`) of symmetric InfoNCE on the pairs.

    `parameters` names the parameters to train (default: all; FedRep trains the final layers and the
    base in turn); `regularizer` adds a term to every step's loss (FedProx, Ditto, MOON); `correction`
    edits the gradients before each optimizer step (SCAFFOLD); `optimizer` builds the local optimizer
    (default `local_optimizer`); `clock` (virtual time, `conditions.compute`)
    charges every step its rows and ends the training at the first step that would pass the deadline.
    `missing` prepares a missing-modality handler from the heads as they are now: it decides which rows
    train and adds its term for image-only and report-only rows. Without one (the baseline), unimodal
    samples contribute nothing, so a hospital without pairs returns its heads unchanged and reports
    zero samples used.
    """
    handler = missing(heads) if missing is not None else None
    rows = (handler.rows if handler is not None else paired_rows(data)).to(device)
    usable = rows.used.nonzero().flatten()  # (U,) row indices
    generator = torch.Generator().manual_seed(seed)
    names = set(parameters) if parameters is not None else None
    trainable = [p for name, p in heads.named_parameters() if names is None or name in names]
    step_rule = optimizer(trainable) if optimizer is not None else local_optimizer(trainable, cfg)
    heads.train()
    losses, samples = [], 0
    for _ in range(cfg.local_epochs if epochs is None else epochs):
        order = usable[torch.randperm(len(usable), generator=generator).to(usable.device)]
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            if clock is not None and not clock.admit(len(batch)):
                break
            pairs = batch[rows.pair[batch]]
            terms = []
            if len(pairs) >= 2:  # a contrastive batch needs at least one negative
                terms.append(symmetric_info_nce(heads.embed_images(rows.image_features[pairs]),
                                                heads.embed_reports(rows.report_features[pairs]), heads.scale()).total)
            unimodal = handler.unimodal_loss(heads, batch) if handler is not None else None
            if unimodal is not None:
                terms.append(unimodal)
            if not terms:
                continue
            objective = torch.stack(terms).sum()
            loss = objective + regularizer(heads, Batch(rows, batch)) if regularizer is not None else objective
            step_rule.zero_grad(set_to_none=True)
            loss.backward()
            if correction is not None:
                correction(heads)
            step_rule.step()
            losses.append(objective.detach())  # reported loss: without the regularizer
            samples += len(batch)
        if clock is not None and clock.cut:
            break
    heads.eval()
    counts = (
        rows.counts(data.image_mask.to(rows.pair.device), data.report_mask.to(rows.pair.device))
        if losses
        else (0, 0, 0)
    )
    mean_loss = torch.stack(losses).mean().item() if losses else float("nan")
    return TrainResult(mean_loss, len(losses), *counts, samples)

