"""Local fine-tuning: FedAvg training; before evaluation each hospital fine-tunes a copy of the global heads
on its own training split (the copy is never sent).

E.g. Wang et al., 2019, "Federated Evaluation of On-device Personalization" (arXiv:1910.10252).
"""

from dataclasses import dataclass

from fedmm.config import ConfigError
from fedmm.models.heads import ContrastiveHeads
from fedmm.strategies.fedavg import averaging_update, build_averaging
from fedmm.strategies.spec import StrategySpec, register
from fedmm.training.updates import LocalStep, StateDict


@dataclass(frozen=True)
class FinetuneOptions:
    finetune_epochs: int  # local epochs on the global heads before evaluating them


def finetuned_model(step: LocalStep, received: StateDict, personal: StateDict | None) -> ContrastiveHeads:
    """The received global heads fine-tuned on this hospital's training split (seeded for evaluation)."""
    step.personal_heads.load_state_dict(received)
    step.train(step.personal_heads, epochs=step.options.finetune_epochs)
    return step.personal_heads


def check(cfg, options: FinetuneOptions) -> None:
    if options.finetune_epochs <= 0:
        raise ConfigError(f"strategy.finetune_epochs={options.finetune_epochs} must be positive")


SPEC = register(StrategySpec(
    name="finetune",
    description="Local fine-tuning (Wang et al., 2019): FedAvg, then each hospital fine-tunes before evaluating",
    build_server=lambda cfg, options, data, roster: build_averaging(cfg, roster),
    local_update=averaging_update,
    personal_model=finetuned_model,
    averages_weights=True,
    robust_aggregation=True,
    options=FinetuneOptions,
    check=check,
))
