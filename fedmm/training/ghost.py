"""DP-SGD's clipped gradient sum on the reference-bank objective, without a gradient per pair (ghost clipping).

A DP-SGD step needs Σ_i min(1, C / ‖∇ℓ_i‖) ∇ℓ_i over the step's pairs. Materializing every pair's gradient
costs a copy of the heads per pair (64 × 2.96M floats for the default heads, 0.76 GB a step) and, with
the bank objective, each of them runs through the K bank rows as well. Ghost clipping (Goodfellow, 2015,
arXiv 1510.01799; Li et al., 2022, ICLR, "Large Language Models Can Be Strong Differentially Private
Learners"; Bu et al., 2023) gets the norms from small Gram matrices instead: for a linear layer whose rows
r (the rows pair i's loss touches) have inputs x_r and output gradients g_r,
    ‖∇_W ℓ_i‖²_F = ‖Σ_r g_r x_rᵀ‖²_F = Σ_{r,s} (g_r·g_s)(x_r·x_s),
and then one ordinary backward pass of Σ_i c_i ℓ_i, with the clip factors c_i held constant, gives the
clipped sum. Opacus' `DPOptimizerFastGradientClipping` adds the noise to it.

Specialized to `ContrastiveHeads`: each head is row-wise LayerNorm → Linear → GELU → Linear → L2 normalize,
and pair i's loss touches its own row and the K bank rows of each head. Under DP the LayerNorm's affine
parameters are frozen, with the temperature (`FROZEN_UNDER_DP`): γ and β in front of a Linear are redundant,
W(γ⊙x̂ + β) + b = (W diag γ)x̂ + (Wβ + b), so freezing them removes no function the heads can represent, and
their per-pair gradients are the one part whose cost grows with the 5120-wide image features. The
per-pair output gradients (B pairs × (1+K) rows, 512 wide) come from `torch.func` (vmap of grad), from
the hidden layer on. `tests/privacy/test_privacy.py` checks norms and sum against materialized per-pair
gradients; `benchmarks/step_cost.py --dp` measures a step both ways.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from fedmm.models.heads import ContrastiveHeads, ProjectionHead
from fedmm.models.losses import reference_bank_info_nce

FROZEN_UNDER_DP = ("logit_scale", "image_head.0.", "report_head.0.")  # prefixes: the temperature, the LayerNorms
CLIP_EPSILON = 1e-6  # as Opacus: c_i = min(1, C / (‖∇ℓ_i‖ + 1e-6))


def dp_trainable(heads: ContrastiveHeads) -> dict[str, nn.Parameter]:
    """The parameters DP-SGD trains: all but `FROZEN_UNDER_DP`."""
    return {name: p for name, p in heads.named_parameters() if not name.startswith(FROZEN_UNDER_DP)}


@contextmanager
def frozen_under_dp(heads: ContrastiveHeads, private: bool = True) -> Iterator[None]:
    """Within it, with `private`, the `FROZEN_UNDER_DP` parameters take no gradient; restored afterwards."""
    trainable = dp_trainable(heads)
    frozen = [p for name, p in heads.named_parameters() if name not in trainable] if private else []
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


def clipped_gradient_sum(heads: ContrastiveHeads, images: torch.Tensor, reports: torch.Tensor,
                         bank_images: torch.Tensor, bank_reports: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Set `.grad` of every `dp_trainable` parameter to Σ_i min(1, C / ‖∇ℓ_i‖) ∇ℓ_i, where ℓ_i is pair i's
    bank-objective term (bank path included), within `frozen_under_dp`. images (B, D_image) and
    reports (B, D_text) are the step's pairs, bank_* (K, D) the reference rows. Returns the (B,) norms ‖∇ℓ_i‖
    over the trainable parameters."""
    trainable = dp_trainable(heads)
    if len(images) == 0:  # an empty Poisson sample: a noise-only step
        for parameter in trainable.values():
            parameter.grad = torch.zeros_like(parameter)
        return images.new_zeros(0)
    with torch.no_grad():
        norms = _pair_gradient_norms(heads, images, reports, bank_images, bank_reports)
    factors = (max_grad_norm / (norms + CLIP_EPSILON)).clamp(max=1.0)  # (B,)
    for parameter in trainable.values():
        parameter.grad = None
    (factors * bank_loss(heads, images, reports, bank_images, bank_reports)).sum().backward()
    return norms


def bank_loss(heads: ContrastiveHeads, images: torch.Tensor, reports: torch.Tensor, bank_images: torch.Tensor,
              bank_reports: torch.Tensor) -> torch.Tensor:
    """(B,) per-pair terms; the bank (K studies, features) goes through the heads with gradient."""
    image_embeddings, report_embeddings = heads(images, reports)  # (B, E) each
    bank_image_embeddings, bank_report_embeddings = heads(bank_images, bank_reports)  # (K, E) each
    return reference_bank_info_nce(image_embeddings, report_embeddings, bank_image_embeddings,
                                   bank_report_embeddings, heads.scale()).total


def materialized_pair_gradients(heads: ContrastiveHeads, trainable: dict[str, nn.Parameter], images: torch.Tensor,
                                reports: torch.Tensor, bank_images: torch.Tensor,
                                bank_reports: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: (B, *shape)}: every pair's own gradient, bank path included, materialized (vmap of grad). The
    direct computation `clipped_gradient_sum` replaces: its tests' reference, and the slow side of
    `benchmarks/step_cost.py --dp`."""
    frozen = {name: p.detach() for name, p in heads.named_parameters() if name not in trainable}

    def pair_loss(parameters, image, report):  # image (D_image,), report (D_text,): one pair
        every = parameters | frozen
        image_embeddings, report_embeddings = torch.func.functional_call(
            heads, every, (torch.cat([image[None], bank_images]), torch.cat([report[None], bank_reports])))  # (1+K, E)
        scale = every["logit_scale"].exp().clamp(max=heads.MAX_LOGIT_SCALE)
        return reference_bank_info_nce(image_embeddings[:1], report_embeddings[:1], image_embeddings[1:],
                                       report_embeddings[1:], scale).total[0]

    parameters = {name: p.detach() for name, p in trainable.items()}
    return torch.func.vmap(torch.func.grad(pair_loss), in_dims=(None, 0, 0))(parameters, images, reports)


def _pair_gradient_norms(heads: ContrastiveHeads, images: torch.Tensor, reports: torch.Tensor,
                         bank_images: torch.Tensor, bank_reports: torch.Tensor) -> torch.Tensor:
    """(B,) ‖∇ℓ_i‖ over the two Linear layers of both heads, by Gram matrices over each pair's 1+K rows."""
    image_inputs, image_hidden = _first_layer(heads.image_head, images, bank_images)
    report_inputs, report_hidden = _first_layer(heads.report_head, reports, bank_reports)
    scale = heads.scale()
    image_tail, report_tail = _tail(heads.image_head), _tail(heads.report_head)

    def pair_loss(image_rows, image_tap, report_rows, report_tap):  # (1+K, H) hidden, (1+K, E) zeros: one pair
        image_embeddings = nn.functional.normalize(image_tail(image_rows) + image_tap, dim=-1)
        report_embeddings = nn.functional.normalize(report_tail(report_rows) + report_tap, dim=-1)
        return reference_bank_info_nce(image_embeddings[:1], report_embeddings[:1], image_embeddings[1:],
                                       report_embeddings[1:], scale).total[0]

    image_rows, report_rows = _rows(*image_hidden), _rows(*report_hidden)  # (B, 1+K, H)
    embed_dim = heads.image_head[3].out_features
    image_tap = image_rows.new_zeros((*image_rows.shape[:2], embed_dim))  # its gradient: the output's
    report_tap = report_rows.new_zeros((*report_rows.shape[:2], embed_dim))
    gradients = torch.func.vmap(torch.func.grad(pair_loss, argnums=(0, 1, 2, 3)))(image_rows, image_tap,
                                                                                  report_rows, report_tap)
    image_hidden_grad, image_out_grad, report_hidden_grad, report_out_grad = gradients  # (B, 1+K, H or E)
    squared = (_linear_squared_norms(_gram(*image_inputs), image_hidden_grad)
               + _linear_squared_norms(_gram(*(nn.functional.gelu(h) for h in image_hidden)), image_out_grad)
               + _linear_squared_norms(_gram(*report_inputs), report_hidden_grad)
               + _linear_squared_norms(_gram(*(nn.functional.gelu(h) for h in report_hidden)), report_out_grad))
    return squared.sqrt()


def _first_layer(head: ProjectionHead, own: torch.Tensor, bank: torch.Tensor):
    """The first Linear's inputs (LayerNorm outputs) and outputs, each as (own rows (B, ·), bank rows (K, ·))."""
    own_inputs, bank_inputs = head[0](own), head[0](bank)
    return (own_inputs, bank_inputs), (head[1](own_inputs), head[1](bank_inputs))


def _tail(head: ProjectionHead):
    """The head after its first Linear (GELU, second Linear), before the L2 normalization."""
    return lambda hidden: head[3](head[2](hidden))


def _rows(own: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(B, 1+K, D): pair i's own row, then the K bank rows."""
    return torch.cat([own[:, None], bank.expand(len(own), *bank.shape)], dim=1)


def _gram(own: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(B, 1+K, 1+K): inner products among pair i's rows, the bank block computed once."""
    cross = own @ bank.T  # (B, K)
    gram = own.new_empty((len(own), 1 + len(bank), 1 + len(bank)))
    gram[:, 0, 0] = own.square().sum(dim=1)
    gram[:, 0, 1:], gram[:, 1:, 0] = cross, cross
    gram[:, 1:, 1:] = bank @ bank.T
    return gram


def _linear_squared_norms(input_gram: torch.Tensor, output_grads: torch.Tensor) -> torch.Tensor:
    """(B,) ‖∇_W‖² + ‖∇_b‖² of a Linear layer for each pair, from its rows' input Gram (B, R, R) and output
    gradients (B, R, out)."""
    weight = (input_gram * (output_grads @ output_grads.transpose(1, 2))).sum(dim=(1, 2))
    bias = output_grads.sum(dim=1).square().sum(dim=1)
    return weight + bias
