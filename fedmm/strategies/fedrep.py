"""FedRep: FedPer's split, trained in turn: the private final layers first, then the shared base.

Collins et al., 2021, "Exploiting Shared Representations for Personalized Federated Learning" (ICML).
"""

from dataclasses import dataclass

from fedmm.config import ConfigError
from fedmm.strategies.fedper import build_shared_base, private_layers, shared_base_model
from fedmm.strategies.spec import StrategySpec, register
from fedmm.training.updates import LocalStep, LocalUpdate, StateDict, snapshot, split_personal


@dataclass(frozen=True)
class FedRepOptions:
    head_epochs: int  # epochs on the private final layers (base frozen) before the base's epochs


def fedrep_update(step: LocalStep, received: StateDict, personal: StateDict | None) -> LocalUpdate:
    """Private final layers first (`head_epochs`, base frozen), then the base (final layers frozen)."""
    personal = private_layers(step, personal)
    step.heads.load_state_dict(received | personal)
    head_phase = step.train(step.heads, epochs=step.options.head_epochs, parameters=list(personal))
    result = step.train(step.heads, seed=step.seed + 1, parameters=list(received)).with_extra(head_phase)
    shared, personal = split_personal(snapshot(step.heads))
    return LocalUpdate(shared, personal, result)


def check(cfg, options: FedRepOptions) -> None:
    if options.head_epochs <= 0:
        raise ConfigError(f"strategy.head_epochs={options.head_epochs} must be positive")


SPEC = register(StrategySpec(
    name="fedrep",
    description="FedRep (Collins et al., 2021): private final layers trained first, then the shared base",
    build_server=build_shared_base,
    local_update=fedrep_update,
    keeps_private_state=True,
    personal_model=shared_base_model,
    averages_weights=True,
    robust_aggregation=True,
    has_global_model=False,
    options=FedRepOptions,
    check=check,
))
