"""Trainable projection heads into a shared image-report embedding space (CLIP-style)."""

import math
from enum import Enum

import torch
from torch import nn

from fedmm.config import HeadsConfig


class HeadGroup(str, Enum):
    """Parameter groups that different hospitals may or may not train; the value is the state-dict prefix."""

    IMAGE = "image_head"
    REPORT = "report_head"
    TEMPERATURE = "logit_scale"  # trained only by the contrastive (paired) objective


def head_group(parameter_name: str) -> HeadGroup:
    for group in HeadGroup:
        if parameter_name == group.value or parameter_name.startswith(group.value + "."):
            return group
    raise KeyError(f"parameter {parameter_name!r} belongs to no head group")


# FedPer/FedRep's private part: the final Linear of each head (index 3 of `ProjectionHead`).
PERSONAL_LAYER_PREFIXES = ("image_head.3.", "report_head.3.")


def is_personal_layer(parameter_name: str) -> bool:
    return parameter_name.startswith(PERSONAL_LAYER_PREFIXES)


class ProjectionHead(nn.Sequential):
    """(B, D_in) frozen features -> (B, D_embed). LayerNorm first: random-init encoders give arbitrary scales."""

    def __init__(self, input_dim: int, hidden_dim: int, embed_dim: int) -> None:
        super().__init__(
            nn.LayerNorm(input_dim),
            nn.Linear(input_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, embed_dim),
        )


class ContrastiveHeads(nn.Module):
    """An image head, a report head and a learnable temperature (stored as log of the logit scale)."""

    MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: keeps the softmax from collapsing onto one pair

    def __init__(self, image_dim: int, report_dim: int, cfg: HeadsConfig) -> None:
        super().__init__()
        self.image_head = ProjectionHead(image_dim, cfg.hidden_dim, cfg.embed_dim)
        self.report_head = ProjectionHead(report_dim, cfg.hidden_dim, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def forward(self, image_features: torch.Tensor, report_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D_image), (B, D_text) -> (B, E) image and (B, E) report embeddings."""
        return self.embed_images(image_features), self.embed_reports(report_features)

    def embed_images(self, image_features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image_head(image_features), dim=-1)  # (B, E)

    def embed_reports(self, report_features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.report_head(report_features), dim=-1)  # (B, E)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.MAX_LOGIT_SCALE)


def build_heads(image_dim: int, report_dim: int, cfg: HeadsConfig, seed: int) -> ContrastiveHeads:
    """Heads with a seeded initialization, independent of the global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ContrastiveHeads(image_dim, report_dim, cfg)
