"""Retrieval imputation: the missing side of a unimodal sample is taken from its nearest reference study.

In the spirit of CAR-MFL (Poudel et al., 2024, "CAR-MFL: Cross-Modal Augmentation by Retrieval for
Multimodal Federated Learning with Missing Modalities", MICCAI), which completes an image-only sample
with the report of the most similar image in a public paired dataset and trains on the completed pair.
Here, at the start of a round, the hospital embeds its image-only samples and the reference images with
the model it received, finds each sample's `retrieval_k` nearest reference images (cosine), and imputes
its report features as the mean of their reports' features (report-only samples: the same, swapped).
Completed samples then join the hospital's pairs in CLIP's in-batch InfoNCE. Only the sample's own
modality counts as the hospital's in the modality-aware average, so a head trained through imputed
reference features alone is not averaged in as if it had seen local data. Nothing leaves the hospital.
"""

from dataclasses import dataclass

import torch

from fedmm.config import MissingModalityConfig
from fedmm.data.modality import Availability
from fedmm.federation import SplitTensors
from fedmm.models.heads import ContrastiveHeads
from fedmm.training.missing.base import TrainingRows, embed_rows, heads_device


def nearest_neighbours(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(m, E) and (R, E) unit vectors -> (m, k) indices of the most similar keys, most similar first;
    ties go to the lower index."""
    k = min(k, len(keys))
    return torch.cat([(queries[i:i + chunk] @ keys.T).topk(k, dim=1).indices for i in range(0, len(queries), chunk)])


@dataclass(frozen=True)
class RetrievalImputation:
    rows: TrainingRows  # every sample a pair, real or imputed, on the heads' device

    @classmethod
    def prepare(cls, cfg: MissingModalityConfig, heads: ContrastiveHeads, data: SplitTensors,
                reference: SplitTensors, seed: int) -> "RetrievalImputation":
        device = heads_device(heads)
        image_features, report_features = data.image_features.clone(), data.report_features.clone()
        image_only, report_only = data.mask(Availability.IMAGE_ONLY), data.mask(Availability.REPORT_ONLY)
        if image_only.any():
            nearest = nearest_neighbours(embed_rows(heads.embed_images, data.image_features[image_only], device),
                                         embed_rows(heads.embed_images, reference.image_features, device),
                                         cfg.retrieval_k).cpu()  # (m, k)
            report_features[image_only] = reference.report_features[nearest].mean(dim=1).to(report_features.dtype)
        if report_only.any():
            nearest = nearest_neighbours(embed_rows(heads.embed_reports, data.report_features[report_only], device),
                                         embed_rows(heads.embed_reports, reference.report_features, device),
                                         cfg.retrieval_k).cpu()
            image_features[report_only] = reference.image_features[nearest].mean(dim=1).to(image_features.dtype)
        nothing = torch.zeros(len(data), dtype=torch.bool)
        rows = TrainingRows(image_features, report_features, torch.ones(len(data), dtype=torch.bool), nothing,
                            nothing.clone(), data.paired_mask)
        return cls(rows.to(device))

    def unimodal_loss(self, heads: ContrastiveHeads, batch: torch.Tensor) -> None:
        return None  # every row is a pair now
