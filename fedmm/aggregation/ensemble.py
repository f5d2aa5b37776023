"""Federated distillation math on a non-private reference set (plain PyTorch, no Flower).

In the spirit of CreamFL (Yu et al., 2023, "Multimodal Federated Learning via Contrastive
Representation Ensemble", ICLR): hospitals share embeddings of public reference items, not weights.
The server ensembles them per modality, weighting each hospital by its sample count and, optionally,
by a quality score measured on the reference set; the global heads are then distilled toward the
ensemble with a contrastive representation-distillation loss (Tian et al., 2020, "Contrastive
Representation Distillation", ICLR): each student embedding must pick its own teacher embedding
among the teachers of the other reference items.

Memory is bounded whatever the reference size R: similarities are computed in blocks of
`chunk_size` x `chunk_size`, never as an R x R matrix, and training steps use batches.
"""

from collections.abc import Sequence

import torch
from torch import nn


def matching_log_probs(queries: torch.Tensor, gallery: torch.Tensor, scale: float,
                       chunk_size: int) -> torch.Tensor:
    """(R,) log p(i | query i) = scale·<q_i, g_i> - logsumexp_j scale·<q_i, g_j>, in blocks.

    queries, gallery: (R, E), row i of each describes reference item i. Peak memory: chunk_size² floats.
    """
    log_norm = torch.full((len(queries),), float("-inf"), dtype=torch.float64)
    for start in range(0, len(queries), chunk_size):
        rows = slice(start, start + chunk_size)
        for gallery_start in range(0, len(gallery), chunk_size):
            block = scale * queries[rows] @ gallery[gallery_start:gallery_start + chunk_size].T  # (C, C)
            log_norm[rows] = torch.logaddexp(log_norm[rows], torch.logsumexp(block.double(), dim=1))
    matched = scale * (queries * gallery).sum(dim=1).double()  # (R,)
    return (matched - log_norm).float()


def quality_score(embeddings: torch.Tensor, global_other_modality: torch.Tensor, scale: float,
                  chunk_size: int) -> float:
    """How well a hospital's reference embeddings of one modality retrieve the global model's embeddings
    of the other modality for the same items: mean matching probability in [0, 1] (chance: 1/R)."""
    return matching_log_probs(embeddings, global_other_modality, scale, chunk_size).exp().mean().item()


def ensemble_weights(sample_counts: Sequence[float], qualities: Sequence[float] | None) -> torch.Tensor:
    """(K,) weights summing to 1: ∝ n_k, or ∝ n_k·q_k with quality weighting."""
    weights = torch.tensor(sample_counts, dtype=torch.float64)
    if qualities is not None:
        weights = weights * torch.tensor(qualities, dtype=torch.float64)
    if weights.sum() <= 0:
        raise ValueError("ensemble_weights needs at least one hospital with a positive weight")
    return weights / weights.sum()


def ensemble_targets(embeddings: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """(R, E) distillation targets: the weighted mean of the hospitals' (R, E) embeddings, re-normalized."""
    stacked = torch.stack([e.double() for e in embeddings])  # (K, R, E)
    mean = (weights.view(-1, 1, 1) * stacked).sum(dim=0)
    return nn.functional.normalize(mean, dim=-1).float()


def match_loss(students: torch.Tensor, teachers: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Contrastive distillation on a batch: cross-entropy of student i over the batch's teachers, target i.

    students, teachers: (B, E) L2-normalized."""
    logits = scale * students @ teachers.T  # (B, B)
    return nn.functional.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
