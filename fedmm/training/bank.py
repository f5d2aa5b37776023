"""Local training with reference-bank negatives, optionally as DP-SGD through Opacus (plain PyTorch).

DP-SGD: Abadi et al., 2016, "Deep Learning with Differential Privacy" (CCS). Each step draws a Poisson
sample of the hospital's pairs (every pair independently with probability q), clips every pair's
gradient to L2 norm C, sums, adds N(0, σ²C²) and divides by the expected batch size. The objective is
`reference_bank_info_nce`: a pair's loss depends on that pair and on the bank only, so per-pair clipping
bounds each pair's influence. The bank is re-embedded from the reference set at every step with the
current heads and without gradient: public data and already-released weights, so it costs no privacy.
"""

import copy
import warnings
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from fedmm.config import ExperimentConfig, TrainConfig
from fedmm.hospitals import SplitTensors
from fedmm.models.heads import ContrastiveHeads
from fedmm.models.losses import reference_bank_info_nce
from fedmm.training.local import TrainResult
from fedmm.training.personalized import LocalUpdate, StateDict, snapshot

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
                        seed: int, device: torch.device | str = "cpu", dp: DPSGD | None = None) -> TrainResult:
    """Train `heads` in place for `cfg.local_epochs` on the pairs, with `cfg.bank_size` bank negatives per
    step; with `dp`, as DP-SGD (the temperature is then frozen: Opacus clips per-layer gradients only).

    `TrainResult.steps` counts noisy steps taken (what the accountant composes), including steps whose
    Poisson sample came out empty. The reported loss is nan under DP: it is a statistic of private data.
    """
    paired = data.paired_mask.nonzero().flatten()
    if len(paired) == 0:  # an unimodal hospital: no pair to learn from (see the missing-modality handlers)
        return TrainResult(float("nan"), 0, 0, 0, 0)
    image_features = data.image_features[paired].to(device)  # (P, D_image)
    report_features = data.report_features[paired].to(device)  # (P, D_text)
    bank_images_all, bank_reports_all = bank.image_features.to(device), bank.report_features.to(device)
    generator = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(heads) if dp is not None else heads  # Opacus hooks stay off the reused model
    if dp is not None:
        model.logit_scale.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if dp is not None:
        optimizer = make_private(model, optimizer, dp, expected_batch_size=max(1, round(dp.sample_rate * len(paired))),
                                 seed=seed)
    model.train()
    losses, steps = [], 0
    for epoch in range(cfg.local_epochs):
        for batch in _batches(len(paired), cfg.batch_size, dp, seed, epoch, generator):
            batch = batch.to(device)
            bank_index = torch.randint(len(bank), (min(cfg.bank_size, len(bank)),), generator=generator).to(device)
            with torch.no_grad():  # the bank carries no gradient (and no per-sample hooks fire without it)
                bank_images = model.embed_images(bank_images_all[bank_index])  # (K, E)
                bank_reports = model.embed_reports(bank_reports_all[bank_index])  # (K, E)
            per_pair = reference_bank_info_nce(model.embed_images(image_features[batch]),
                                               model.embed_reports(report_features[batch]),
                                               bank_images, bank_reports, model.scale()).total  # (B,)
            loss = per_pair.sum() if dp is not None else per_pair.mean()
            optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # inputs are frozen features: Opacus' hooks warn about it
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            optimizer.step()
            steps += 1
            if dp is None:
                losses.append(loss.detach())
    model.eval()
    if dp is not None:
        heads.load_state_dict(model.state_dict())
    mean_loss = torch.stack(losses).mean().item() if losses else float("nan")
    return TrainResult(mean_loss, steps, len(paired), len(paired), len(paired))


def make_private(model: ContrastiveHeads, optimizer: torch.optim.Optimizer, dp: DPSGD, expected_batch_size: int,
                 seed: int) -> DPOptimizer:
    """Opacus' DP-SGD around `optimizer`: hooks on `model`'s layers compute per-sample gradients of a
    sum-reduced loss; each step clips them to `dp.max_grad_norm`, sums, adds seeded N(0, σ²C²) and divides
    by `expected_batch_size` (q·n, fixed, as the privacy analysis of Poisson sampling assumes)."""
    GradSampleModule(model, loss_reduction="sum")
    device = next(model.parameters()).device
    return DPOptimizer(optimizer, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                       expected_batch_size=expected_batch_size, loss_reduction="mean",
                       generator=_derived_generator(seed, 1, device))


def _batches(num_samples: int, batch_size: int, dp: DPSGD | None, seed: int, epoch: int,
             generator: torch.Generator):
    """Index batches of one epoch: Poisson samples under DP (what the accountant assumes), else shuffled
    minibatches of `batch_size`."""
    if dp is not None:
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
                cfg: ExperimentConfig, seed: int, device: torch.device, dp: DPSGD | None) -> LocalUpdate:
    """FedAvg's local step with the reference-bank objective (DP-SGD with `dp`): train the received heads,
    send them all."""
    heads.load_state_dict(received)
    result = train_heads_on_bank(heads, data, bank, cfg.train, seed, device, dp)
    return LocalUpdate(snapshot(heads), None, result)
