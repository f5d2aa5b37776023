"""Terms that pull a hospital's heads toward a reference model (FedProx, Ditto)."""

from collections.abc import Mapping

import torch
from torch import nn


def proximal_term(model: nn.Module, anchor: Mapping[str, torch.Tensor], weight: float) -> torch.Tensor:
    """(weight/2) · Σ ||θ - θ_anchor||² over the trainable parameters of `model` that `anchor` holds.

    Its gradient is weight · (θ - θ_anchor): FedProx's μ-term (Li et al., 2020) and Ditto's λ-term
    (Li et al., 2021). `anchor` is detached: it is the global model the hospital received.
    """
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and name in anchor:
            total = total + (parameter - anchor[name].to(parameter.device).detach()).pow(2).sum()
    return 0.5 * weight * total
