"""A hospital's local training of the contrastive heads on its cached features (plain PyTorch)."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from fedmm.config import TrainConfig
from fedmm.hospitals import SplitTensors
from fedmm.models.heads import ContrastiveHeads
from fedmm.models.losses import symmetric_info_nce


@dataclass(frozen=True)
class TrainResult:
    """What a hospital reports after local training. The counts weight modality-aware aggregation."""

    loss: float  # mean symmetric InfoNCE over the steps taken; nan when no step was possible
    steps: int
    num_paired_used: int  # samples that entered the contrastive loss
    num_image_used: int  # samples whose image features trained the image head
    num_report_used: int  # samples whose report features trained the report head


Regularizer = Callable[[ContrastiveHeads], torch.Tensor]  # an extra loss term on the current heads


def train_heads(heads: ContrastiveHeads, data: SplitTensors, cfg: TrainConfig, seed: int,
                device: torch.device | str = "cpu", *, epochs: int | None = None,
                parameters: Iterable[str] | None = None, regularizer: Regularizer | None = None) -> TrainResult:
    """Train `heads` in place for `epochs` (default `cfg.local_epochs`) of symmetric InfoNCE on the pairs.

    `parameters` names the parameters to train (default: all; FedRep trains the final layers and the
    base in turn); `regularizer` adds a term to every step's loss (FedProx, Ditto).
    Baseline: image-only and report-only samples contribute nothing (there is no pair to contrast),
    so a hospital without pairs returns its heads unchanged and reports zero samples used.
    """
    paired = data.paired_mask.nonzero().flatten()
    image_features = data.image_features[paired].to(device)  # (P, D_image)
    report_features = data.report_features[paired].to(device)  # (P, D_text)
    generator = torch.Generator().manual_seed(seed)
    names = set(parameters) if parameters is not None else None
    trainable = [p for name, p in heads.named_parameters() if names is None or name in names]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    heads.train()
    losses = []
    for _ in range(cfg.local_epochs if epochs is None else epochs):
        order = torch.randperm(len(paired), generator=generator).to(device)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            if len(batch) < 2:  # a contrastive batch needs at least one negative
                continue
            contrastive = symmetric_info_nce(heads.embed_images(image_features[batch]),
                                             heads.embed_reports(report_features[batch]), heads.scale()).total
            loss = contrastive + regularizer(heads) if regularizer is not None else contrastive
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(contrastive.detach())  # reported loss: the contrastive term alone
    heads.eval()
    used = len(paired) if losses else 0
    mean_loss = torch.stack(losses).mean().item() if losses else float("nan")
    return TrainResult(mean_loss, len(losses), used, used, used)
