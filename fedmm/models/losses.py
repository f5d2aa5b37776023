"""Contrastive objectives, returning their named terms."""

from typing import NamedTuple

import torch
from torch import nn


class ContrastiveLoss(NamedTuple):
    total: torch.Tensor
    image_to_report: torch.Tensor
    report_to_image: torch.Tensor


def symmetric_info_nce(image_embeddings: torch.Tensor, report_embeddings: torch.Tensor,
                       logit_scale: torch.Tensor) -> ContrastiveLoss:
    """CLIP's loss (Radford et al., 2021): cross-entropy over in-batch pairs, both directions.

    image_embeddings, report_embeddings: (B, E), L2-normalized; row i of each is a pair.
    """
    logits = logit_scale * image_embeddings @ report_embeddings.T  # (B, B)
    targets = torch.arange(len(logits), device=logits.device)
    image_to_report = nn.functional.cross_entropy(logits, targets)
    report_to_image = nn.functional.cross_entropy(logits.T, targets)
    return ContrastiveLoss((image_to_report + report_to_image) / 2, image_to_report, report_to_image)
