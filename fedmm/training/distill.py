"""Training loops of federated distillation: the hospital's local step and the server's distillation.

Both pull embeddings of reference items toward targets with `match_loss`: a hospital toward the global
model's reference embeddings (its regularizer, CreamFL's inter- and intra-modal terms), the server's
global heads toward the hospitals' ensemble. Reference items are public; private items only ever enter
the hospital's own InfoNCE term.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fedmm.aggregation.ensemble import match_loss
from fedmm.config import TrainConfig
from fedmm.federation import SplitTensors
from fedmm.models.heads import ContrastiveHeads
from fedmm.models.losses import symmetric_info_nce
from fedmm.training.local import TrainResult, local_optimizer


@dataclass(frozen=True)
class ReferenceEmbeddings:
    """(R, E) embeddings of the reference items, per modality; None where a holder has no such modality."""

    image: torch.Tensor | None
    report: torch.Tensor | None


@torch.inference_mode()
def embed_reference(heads: ContrastiveHeads, reference: SplitTensors, image: bool = True, report: bool = True,
                    batch_size: int = 1024) -> ReferenceEmbeddings:
    heads.eval()
    device = next(heads.parameters()).device

    def embed(features: torch.Tensor, head) -> torch.Tensor:
        return torch.cat(
            [head(features[i : i + batch_size].to(device)).cpu() for i in range(0, len(features), batch_size)]
        )

    return ReferenceEmbeddings(
        embed(reference.image_features, heads.embed_images) if image else None,
        embed(reference.report_features, heads.embed_reports) if report else None,
    )


def alignment_loss(
    students: ReferenceEmbeddings, teachers: ReferenceEmbeddings, scale: torch.Tensor | float
) -> torch.Tensor:
    """Mean `match_loss` over every (student modality, teacher modality) both sides have, on one batch:
    intra-modal terms keep each space where the teachers put it, inter-modal ones keep the two aligned."""
    terms = [
        match_loss(student, teacher, scale)
        for student in (students.image, students.report)
        if student is not None
        for teacher in (teachers.image, teachers.report)
        if teacher is not None
    ]
    return torch.stack(terms).mean()


def _batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled batches of range(count), reshuffled every pass, forever (batches of at least 2)."""
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - 1, batch_size):
            batch = order[start : start + batch_size]
            if len(batch) >= 2:
                yield batch


def _slice(embeddings: ReferenceEmbeddings, batch: torch.Tensor, device: torch.device) -> ReferenceEmbeddings:
    return ReferenceEmbeddings(
        *(None if e is None else e[batch].to(device) for e in (embeddings.image, embeddings.report))
    )


def train_with_reference(
    heads: ContrastiveHeads,
    data: SplitTensors,
    reference: SplitTensors,
    global_embeddings: ReferenceEmbeddings,
    cfg: TrainConfig,
    weight: float,
    seed: int,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """A hospital's local step: InfoNCE on its private pairs + `weight` x alignment of its reference
    embeddings (of the modalities it holds) to the global ones. An epoch is as many steps as the larger
    of its pair batches and the reference batches, so a hospital without pairs still trains."""
    holds_image, holds_report = bool(data.image_mask.any()), bool(data.report_mask.any())
    paired = data.paired_mask.nonzero().flatten()
    generator = torch.Generator().manual_seed(seed)
    pair_batches = _batches(len(paired), cfg.batch_size, generator) if len(paired) >= 2 else None
    reference_batches = _batches(len(reference), cfg.batch_size, generator)
    steps_per_epoch = max(
        -(-len(paired) // cfg.batch_size) if pair_batches else 0, -(-len(reference) // cfg.batch_size)
    )
    optimizer = local_optimizer(heads.parameters(), cfg)
    heads.train()
    losses, samples = [], 0
    for _ in range(cfg.local_epochs * steps_per_epoch):
        batch = next(reference_batches)
        samples += len(batch)
        students = ReferenceEmbeddings(
            heads.embed_images(reference.image_features[batch].to(device)) if holds_image else None,
            heads.embed_reports(reference.report_features[batch].to(device)) if holds_report else None,
        )
        loss = weight * alignment_loss(students, _slice(global_embeddings, batch, device), heads.scale().detach())
        if pair_batches is not None:
            rows = paired[next(pair_batches)]
            contrastive = symmetric_info_nce(
                heads.embed_images(data.image_features[rows].to(device)),
                heads.embed_reports(data.report_features[rows].to(device)),
                heads.scale(),
            ).total
            loss = loss + contrastive
            losses.append(contrastive.detach())
            samples += len(rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    heads.eval()
    num_image, num_report = int(data.image_mask.sum()), int(data.report_mask.sum())
    mean_loss = torch.stack(losses).mean().item() if losses else float("nan")
    return TrainResult(
        mean_loss, cfg.local_epochs * steps_per_epoch, len(paired) if losses else 0, num_image, num_report, samples
    )


def distill_heads(
    heads: ContrastiveHeads,
    reference: SplitTensors,
    targets: ReferenceEmbeddings,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> float:
    """Server step: train the global heads so their reference embeddings match the ensemble `targets`.
    The temperature is left as is (no term here constrains it). Returns the mean distillation loss."""
    generator = torch.Generator().manual_seed(seed)
    batches = _batches(len(reference), batch_size, generator)
    parameters = [p for name, p in heads.named_parameters() if name != "logit_scale"]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    heads.train()
    losses = []
    for _ in range(epochs * -(-len(reference) // batch_size)):
        batch = next(batches)
        students = ReferenceEmbeddings(
            heads.embed_images(reference.image_features[batch].to(device)) if targets.image is not None else None,
            heads.embed_reports(reference.report_features[batch].to(device)) if targets.report is not None else None,
        )
        loss = alignment_loss(students, _slice(targets, batch, device), heads.scale().detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    heads.eval()
    return torch.stack(losses).mean().item() if losses else float("nan")
