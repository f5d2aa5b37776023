"""The rows a hospital trains on in one round, and the baseline handler that ignores unimodal samples."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from fedmm.federation import SplitTensors
from fedmm.models.heads import ContrastiveHeads


@dataclass(frozen=True)
class TrainingRows:
    """What one hospital trains on in one round. Features of an absent side are never read."""

    image_features: torch.Tensor  # (n, D_image); imputed where `imputed_image`
    report_features: torch.Tensor  # (n, D_text); imputed where `imputed_report`
    pair: torch.Tensor  # (n,) bool: the row enters the in-batch InfoNCE (a real or an imputed pair)
    image_only: torch.Tensor  # (n,) bool: the row enters the handler's unimodal image term
    report_only: torch.Tensor  # (n,) bool: ... its unimodal report term
    real_pair: torch.Tensor  # (n,) bool: both sides are the hospital's own

    def to(self, device: torch.device | str) -> "TrainingRows":
        return TrainingRows(*(getattr(self, name).to(device) for name in
                              ("image_features", "report_features", "pair", "image_only", "report_only", "real_pair")))

    @property
    def used(self) -> torch.Tensor:
        return self.pair | self.image_only | self.report_only

    def counts(self, has_image: torch.Tensor, has_report: torch.Tensor) -> tuple[int, int, int]:
        """(pairs, images, reports) of the hospital's own data that carry gradient: the modality-aware
        average weights each head by these, so imputed reference features never count as the hospital's."""
        used = self.used
        return int((used & self.real_pair).sum()), int((used & has_image).sum()), int((used & has_report).sum())


class MissingModalityHandler(Protocol):
    """Prepared for one hospital and round; `rows` are what it trains on."""

    rows: TrainingRows

    def unimodal_loss(self, heads: ContrastiveHeads, batch: torch.Tensor) -> torch.Tensor | None:
        """The mean unimodal term over the image-only and report-only rows among `batch` (row indices,
        on the rows' device); None when the batch has none."""
        ...


@torch.no_grad()
def embed_rows(embed: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor, device: torch.device,
               chunk: int = 1024) -> torch.Tensor:
    """(n, D) features -> (n, E) embeddings on `device`, through `embed` (e.g. `heads.embed_images`)."""
    if not len(features):
        return torch.empty(0, 0, device=device)
    return torch.cat([embed(features[i:i + chunk].to(device)) for i in range(0, len(features), chunk)])


def paired_rows(data: SplitTensors) -> TrainingRows:
    """Pairs train as in CLIP; nothing else does."""
    paired, nothing = data.paired_mask, torch.zeros(len(data), dtype=torch.bool)
    return TrainingRows(data.image_features, data.report_features, paired, nothing, nothing.clone(), paired)


def heads_device(heads: ContrastiveHeads) -> torch.device:
    return next(heads.parameters()).device


@dataclass(frozen=True)
class IgnoreUnimodal:
    """The baseline: image-only and report-only samples contribute nothing."""

    rows: TrainingRows

    def unimodal_loss(self, heads: ContrastiveHeads, batch: torch.Tensor) -> None:
        return None
