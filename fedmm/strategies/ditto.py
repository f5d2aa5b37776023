"""Ditto: FedAvg for the global heads, plus a private model per hospital pulled toward them.

Li et al., 2021, "Ditto: Fair and Robust Federated Learning Through Personalization" (ICML): the
global model is trained as in FedAvg; a private full model v is trained on the local objective plus
(λ/2)·||v - w_global||².
"""

from dataclasses import dataclass

from fedmm.config import ConfigError
from fedmm.models.heads import ContrastiveHeads
from fedmm.strategies.fedavg import build_averaging
from fedmm.strategies.spec import StrategySpec, register
from fedmm.training.updates import LocalStep, LocalUpdate, StateDict, global_update, proximal_to, snapshot


@dataclass(frozen=True)
class DittoOptions:
    ditto_lambda: float  # λ: pull of the personal model toward the global one (∞: FedAvg, 0: local training)


def ditto_update(step: LocalStep, received: StateDict, personal: StateDict | None) -> LocalUpdate:
    """FedAvg's step on the received heads (sent), and λ-regularized steps on the private model (kept)."""
    update = global_update(step, received)
    step.personal_heads.load_state_dict(personal if personal is not None else received)  # v starts at w_global
    private = step.train(step.personal_heads, seed=step.seed + 1,
                         regularizer=proximal_to(received, step.options.ditto_lambda, step.device))
    return LocalUpdate(update.shared, snapshot(step.personal_heads), update.result.with_extra(private))


def private_model(step: LocalStep, received: StateDict, personal: StateDict | None) -> ContrastiveHeads:
    """The hospital's private model v (before its first training: the global heads)."""
    step.personal_heads.load_state_dict(personal if personal is not None else received)
    return step.personal_heads


def check(cfg, options: DittoOptions) -> None:
    if options.ditto_lambda < 0:
        raise ConfigError(f"strategy.ditto_lambda={options.ditto_lambda} must be >= 0")


SPEC = register(StrategySpec(
    name="ditto",
    description="Ditto (Li et al., 2021): FedAvg plus a private model per hospital, pulled toward the global one",
    build_server=lambda cfg, options, data, roster: build_averaging(cfg, roster),
    local_update=ditto_update,
    keeps_private_state=True,
    personal_model=private_model,
    averages_weights=True,
    robust_aggregation=True,
    options=DittoOptions,
    check=check,
))
