"""Local training with reference-bank negatives, optionally as DP-SGD through Opacus (plain PyTorch).

DP-SGD: Abadi et al., 2016, "Deep Learning with Differential Privacy" (CCS). Each step draws a Poisson
sample of the hospital's pairs (every pair independently with probability q), clips every pair's
gradient to L2 norm C, sums, adds N(0, σ²C²) and divides by the expected batch size (Opacus'
`DPOptimizer`). The objective is `reference_bank_info_nce`: pair i's loss depends on pair i and on K
reference studies drawn for the step, embedded by the same heads *with* gradient, so negatives are
pushed apart as in CLIP. Its gradient is a function of one private pair and public data, so clipping it
bounds that pair's influence. Opacus' layer hooks would count the bank rows as extra samples, so the
clipped sum of the per-pair gradients (bank path included) is computed by `fedmm.training.ghost` (ghost
clipping: the norms from Gram matrices, the sum from one backward pass) and handed to Opacus'
`DPOptimizerFastGradientClipping`, which adds the noise. The temperature and the LayerNorms' affine
parameters stay frozen under DP (`ghost.FROZEN_UNDER_DP`).

Why the gradient through the bank: embedded without it, whether once per round or at every step, the
heads drifted away from the stale bank or collapsed (loss at log(K+1)) during development.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedmm.config import ExperimentConfig, TrainConfig
from fedmm.federation import SplitTensors
from fedmm.models.heads import ContrastiveHeads
from fedmm.simulation.conditions import Clock
from fedmm.training.ghost import bank_loss, clipped_gradient_sum, dp_trainable, frozen_under_dp
from fedmm.training.local import TrainResult, local_optimizer
from fedmm.training.updates import LocalUpdate, StateDict, snapshot

if TYPE_CHECKING:  # opacus loads only when DP-SGD runs (about 1 s of every process start otherwise)
    from opacus.optimizers import DPOptimizerFastGradientClipping

OBJECTIVES = ("auto", "in_batch", "reference_bank")
REFERENCE_BANK = "reference_bank"


@dataclass(frozen=True)
class DPSGD:
    """One round's DP-SGD settings at one hospital."""

    noise_multiplier: float  # σ
    max_grad_norm: float  # C
    sample_rate: float  # q = batch_size / n, capped at 1

    def steps_per_epoch(self) -> int:
        return int(1 / self.sample_rate)  # as Opacus's Poisson sampler: one expected pass over the data


def sample_rate(batch_size: int, num_samples: int) -> float:
    return min(1.0, batch_size / num_samples)


def train_heads_on_bank(heads: ContrastiveHeads, data: SplitTensors, bank: SplitTensors, cfg: TrainConfig,
                        seed: int, device: torch.device | str = "cpu", dp: DPSGD | None = None,
                        clock: Clock | None = None) -> TrainResult:
    """Train `heads` in place for `cfg.local_epochs` on the pairs, with `cfg.bank_size` reference negatives
    per step; with `dp`, as DP-SGD (the temperature and the LayerNorms' affine parameters are then frozen,
    and no loss is reported: it is a statistic of private data). `clock`: as in `train_heads`, the steps
    that fit before the deadline.

    `TrainResult.steps` counts the steps taken (what the accountant composes), including DP steps whose
    Poisson sample came out empty (they still add noise).
    """
    paired = data.paired_mask.nonzero().flatten()
    if len(paired) == 0:  # an unimodal hospital: no pair to learn from (see the missing-modality handlers)
        return TrainResult.idle()
    image_features = data.image_features[paired].to(device)  # (P, D_image)
    report_features = data.report_features[paired].to(device)  # (P, D_text)
    bank_image_features, bank_report_features = bank.image_features.to(device), bank.report_features.to(device)
    generator = torch.Generator().manual_seed(seed)
    trainable = dp_trainable(heads) if dp is not None else dict(heads.named_parameters())
    optimizer: torch.optim.Optimizer = local_optimizer(trainable.values(), cfg)
    if dp is not None:
        optimizer = make_private(optimizer, dp, expected_batch_size=max(1, round(dp.sample_rate * len(paired))),
                                 seed=seed)
    heads.train()
    losses, steps, samples = [], 0, 0
    with frozen_under_dp(heads, dp is not None):
        for epoch in range(cfg.local_epochs):
            for batch in _batches(len(paired), cfg.batch_size, dp, seed, epoch, generator):
                if clock is not None and not clock.admit(len(batch)):
                    break
                batch = batch.to(device)
                drawn = torch.randint(len(bank), (min(cfg.bank_size, len(bank)),), generator=generator).to(device)
                images, reports = image_features[batch], report_features[batch]  # (B, D_image), (B, D_text)
                bank_images, bank_reports = bank_image_features[drawn], bank_report_features[drawn]  # (K, D) each
                optimizer.zero_grad(set_to_none=True)
                if dp is None:
                    loss = bank_loss(heads, images, reports, bank_images, bank_reports).mean()
                    loss.backward()
                    losses.append(loss.detach())
                else:  # .grad = the clipped sum, what DPOptimizerFastGradientClipping noises and averages
                    clipped_gradient_sum(heads, images, reports, bank_images, bank_reports, dp.max_grad_norm)
                optimizer.step()
                steps += 1
                samples += len(batch)
            if clock is not None and clock.cut:
                break
    heads.eval()
    mean_loss = torch.stack(losses).mean().item() if losses else float("nan")
    return TrainResult(mean_loss, steps, len(paired), len(paired), len(paired), samples)


def embed_in_chunks(embed, features: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    return torch.cat([embed(features[start:start + chunk]) for start in range(0, len(features), chunk)])


def make_private(optimizer: torch.optim.Optimizer, dp: DPSGD, expected_batch_size: int,
                 seed: int) -> "DPOptimizerFastGradientClipping":
    """Opacus' DP-SGD step around `optimizer`: each step takes `.grad`, the sum of the per-pair gradients
    each clipped to L2 norm `dp.max_grad_norm` (set by `ghost.clipped_gradient_sum`), adds seeded
    N(0, σ²C²) and divides by `expected_batch_size` (q·n, fixed, as the analysis of Poisson sampling assumes)."""
    from opacus.optimizers import DPOptimizerFastGradientClipping

    device = optimizer.param_groups[0]["params"][0].device
    return DPOptimizerFastGradientClipping(optimizer, noise_multiplier=dp.noise_multiplier,
                                           max_grad_norm=dp.max_grad_norm, expected_batch_size=expected_batch_size,
                                           loss_reduction="mean", generator=_derived_generator(seed, 1, device))


def _batches(num_samples: int, batch_size: int, dp: DPSGD | None, seed: int, epoch: int,
             generator: torch.Generator):
    """Index batches of one epoch: Poisson samples under DP (what the accountant assumes), else shuffled
    minibatches of `batch_size`."""
    if dp is not None:
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        sampler = UniformWithReplacementSampler(num_samples=num_samples, sample_rate=dp.sample_rate,
                                                generator=_derived_generator(seed, 2 + epoch, "cpu"))
        for indices in sampler:
            yield torch.as_tensor(indices, dtype=torch.long)
        return
    order = torch.randperm(num_samples, generator=generator)
    for start in range(0, num_samples, batch_size):
        yield order[start:start + batch_size]


def _derived_generator(seed: int, offset: int, device: torch.device | str) -> torch.Generator:
    """A separate seeded stream (noise, Poisson sampling), so one never shifts the other's draws."""
    return torch.Generator(device=device).manual_seed((seed + offset * 1_000_003) % (2**63))


def uses_reference_bank(cfg: ExperimentConfig) -> bool:
    """The objective hospitals train with: `train.objective`, where `auto` means reference-bank negatives
    exactly when sample-level DP is on (in-batch negatives are unsound under per-sample clipping)."""
    if cfg.train.objective == "auto":
        return cfg.privacy.sample.enabled
    return cfg.train.objective == REFERENCE_BANK


def bank_update(heads: ContrastiveHeads, received: StateDict, data: SplitTensors, bank: SplitTensors,
                cfg: ExperimentConfig, seed: int, device: torch.device, dp: DPSGD | None,
                clock: Clock | None = None) -> LocalUpdate:
    """FedAvg's local step with the reference-bank objective (DP-SGD with `dp`): train the received heads,
    send them all."""
    heads.load_state_dict(received)
    result = train_heads_on_bank(heads, data, bank, cfg.train, seed, device, dp, clock)
    return LocalUpdate(snapshot(heads), None, result)
