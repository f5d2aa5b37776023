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


def reference_bank_info_nce(image_embeddings: torch.Tensor, report_embeddings: torch.Tensor,
                            bank_images: torch.Tensor, bank_reports: torch.Tensor,
                            logit_scale: torch.Tensor) -> ContrastiveLoss:
    """InfoNCE whose negatives come from a non-private bank, never from the other private pairs.

    With CLIP's in-batch negatives every pair also sits in the loss terms of all the others, so clipping
    one example's gradient does not bound its influence (Logit-DP; Kong et al., 2023, arXiv 2310.03104).
    Here the term of pair i depends only on pair i and on the bank (embeddings of a public reference
    set, without gradient), which is what DP-SGD's per-sample clipping needs:
        ℓ_i = ½ CE([s⟨u_i, v_i⟩, s⟨u_i, b^report_k⟩_k], 0) + ½ CE([s⟨v_i, u_i⟩, s⟨v_i, b^image_k⟩_k], 0)

    image_embeddings, report_embeddings: (B, E), L2-normalized, row i of each is a pair.
    bank_images, bank_reports: (K, E), L2-normalized, detached. Returns per-example terms, each (B,).
    """
    positive = logit_scale * (image_embeddings * report_embeddings).sum(dim=-1, keepdim=True)  # (B, 1)
    image_logits = torch.cat([positive, logit_scale * image_embeddings @ bank_reports.T], dim=1)  # (B, 1+K)
    report_logits = torch.cat([positive, logit_scale * report_embeddings @ bank_images.T], dim=1)  # (B, 1+K)
    targets = torch.zeros(len(positive), dtype=torch.long, device=positive.device)  # the pair is column 0
    image_to_report = nn.functional.cross_entropy(image_logits, targets, reduction="none")
    report_to_image = nn.functional.cross_entropy(report_logits, targets, reduction="none")
    return ContrastiveLoss((image_to_report + report_to_image) / 2, image_to_report, report_to_image)
