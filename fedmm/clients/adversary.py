"""Faulty and malicious hospitals: what a hospital named in `scenario.adversaries` sends instead of its update.

A simulated attack on the federation's aggregation, as in the robust-aggregation literature (Blanchard
et al., 2017, Krum; Yin et al., 2018, median and trimmed mean; Baruch et al., 2019):

- `noise`: Gaussian noise N(0, scale²) in place of its heads (a broken or random node);
- `sign_flip`: received - scale·Δ, the honest update Δ = trained - received reversed and scaled;
- `scale`: received + scale·Δ, the honest update boosted (model replacement);
- `stale`: the run's initial heads, whatever it received (a site stuck on an old model);
- `shuffled_pairs`: trains honestly on mismatched image-report pairs (a data-pipeline fault).

The hospital still reports its honest sample counts, so a weighted average gives it its usual weight.
Every random draw (which hospitals, for a `fraction`; the noise) comes from the run's seed.
"""

from dataclasses import dataclass

import numpy as np
import torch

from fedmm.config import ConfigError, ScenarioConfig
from fedmm.federation import SplitTensors
from fedmm.seeding import ADVERSARY_STREAM, derive_seed

StateDict = dict[str, torch.Tensor]

KINDS = ("noise", "sign_flip", "scale", "stale", "shuffled_pairs")


@dataclass(frozen=True)
class Adversary:
    """One misbehaving hospital."""

    hospital: int
    kind: str  # one of KINDS
    scale: float

    def training_data(self, data: SplitTensors, seed: int) -> SplitTensors:
        """What it trains on: its own split, or (`shuffled_pairs`) with the reports of its pairs permuted."""
        if self.kind != "shuffled_pairs":
            return data
        paired = data.paired_mask.nonzero().flatten()
        generator = torch.Generator().manual_seed(seed)
        reports = data.report_features.clone()
        reports[paired] = data.report_features[paired[torch.randperm(len(paired), generator=generator)]]
        return SplitTensors(data.image_features, reports, data.availability, data.labels)

    def corrupt(self, trained: StateDict, received: StateDict, initial: StateDict, seed: int) -> StateDict:
        """What it sends, given what it trained from what it received (`initial`: the run's first heads)."""
        if self.kind == "noise":
            generator = torch.Generator().manual_seed(seed)
            return {key: self.scale * torch.randn(value.shape, generator=generator, dtype=torch.float32).to(value)
                    for key, value in trained.items()}
        if self.kind == "sign_flip":
            return {key: received[key] - self.scale * (value - received[key]) for key, value in trained.items()}
        if self.kind == "scale":
            return {key: received[key] + self.scale * (value - received[key]) for key, value in trained.items()}
        if self.kind == "stale":
            return {key: initial[key].clone() for key in trained}
        return trained  # shuffled_pairs: the fault is in its training data


def resolve_adversaries(scenario: ScenarioConfig, seed: int) -> dict[int, Adversary]:
    """hospital id -> its `Adversary`: those named by id, then each `fraction` drawn from the hospitals not
    yet taken (seeded by the run's seed, so every process draws the same ones)."""
    check_adversaries(scenario)
    adversaries: dict[int, Adversary] = {}
    for entry in scenario.adversaries:
        if entry.hospital is not None:
            adversaries[entry.hospital] = Adversary(entry.hospital, entry.kind, entry.scale)
    rng = np.random.default_rng(derive_seed(seed, ADVERSARY_STREAM))
    for entry in scenario.adversaries:
        if entry.fraction is not None:
            free = [h for h in range(scenario.num_hospitals or 0) if h not in adversaries]
            count = min(len(free), round(entry.fraction * (scenario.num_hospitals or 0)))
            for hospital in sorted(rng.choice(free, size=count, replace=False).tolist()):
                adversaries[hospital] = Adversary(hospital, entry.kind, entry.scale)
    return adversaries


def check_adversaries(scenario: ScenarioConfig) -> None:
    hospitals = scenario.num_hospitals
    named: list[int] = []
    for index, entry in enumerate(scenario.adversaries):
        where = f"scenario.adversaries[{index}]"
        if entry.kind not in KINDS:
            raise ConfigError(f"{where}.kind={entry.kind!r} is unknown; valid: {list(KINDS)}")
        if (entry.hospital is None) == (entry.fraction is None):
            raise ConfigError(f"{where} needs exactly one of `hospital` (an id) or `fraction` (of the hospitals), "
                              "e.g. {hospital: 3, kind: sign_flip, scale: 5}")
        if entry.hospital is not None:
            if hospitals is not None and not 0 <= entry.hospital < hospitals:
                raise ConfigError(f"{where}.hospital={entry.hospital} is not a hospital id; valid: 0..{hospitals - 1}")
            if entry.hospital in named:
                raise ConfigError(f"{where}.hospital={entry.hospital} is named twice; give each hospital one kind")
            named.append(entry.hospital)
        if entry.fraction is not None and not 0 <= entry.fraction <= 1:
            raise ConfigError(f"{where}.fraction={entry.fraction} must lie in [0, 1]")
        if entry.scale < 0:
            raise ConfigError(f"{where}.scale={entry.scale} must be >= 0 (sign_flip already reverses the update)")

