"""FedPer: the final layer of each head stays at the hospital; only the shared base is averaged.

Arivazhagan et al., 2019, "Federated Learning with Personalization Layers" (arXiv:1912.00818). The
private layers are `fedmm.models.heads.PERSONAL_LAYER_PREFIXES`; everything is trained jointly. The
server never holds a complete model, so there is no global-test evaluation: each hospital's own model
is judged on its own test split. FedRep (`fedrep.py`) shares this server side.
"""

from collections.abc import Mapping

from flwr.app import ArrayRecord

from fedmm.models.heads import ContrastiveHeads, is_personal_layer
from fedmm.strategies.base import HospitalFedAvg
from fedmm.strategies.fedavg import build_averaging
from fedmm.strategies.spec import NoOptions, StrategySpec, register
from fedmm.training.updates import LocalStep, LocalUpdate, StateDict, snapshot, split_personal


class SharedBaseFedAvg(HospitalFedAvg):
    """FedAvg over the shared base; the final layers never reach the server."""

    has_global_model = False

    def initial_arrays(self, heads_state: Mapping) -> ArrayRecord:
        return ArrayRecord({key: value for key, value in heads_state.items() if not is_personal_layer(key)})


def private_layers(step: LocalStep, personal: StateDict | None) -> StateDict:
    """The hospital's final layers: its own, or (before its first training) the run's initial ones."""
    return personal if personal is not None else split_personal(step.initial_state)[1]


def fedper_update(step: LocalStep, received: StateDict, personal: StateDict | None) -> LocalUpdate:
    """Train base and private final layers together; send the base, keep the final layers."""
    step.heads.load_state_dict(received | private_layers(step, personal))
    result = step.train(step.heads)
    shared, personal = split_personal(snapshot(step.heads))
    return LocalUpdate(shared, personal, result)


def shared_base_model(step: LocalStep, received: StateDict, personal: StateDict | None) -> ContrastiveHeads:
    """The global base with this hospital's final layers."""
    step.personal_heads.load_state_dict(received | private_layers(step, personal))
    return step.personal_heads


def build_shared_base(cfg, options, data, roster):
    return build_averaging(cfg, roster, strategy_class=SharedBaseFedAvg)


SPEC = register(StrategySpec(
    name="fedper",
    description="FedPer (Arivazhagan et al., 2019): final layers private, base averaged",
    build_server=build_shared_base,
    local_update=fedper_update,
    keeps_private_state=True,
    personal_model=shared_base_model,
    averages_weights=True,
    robust_aggregation=True,
    has_global_model=False,
    options=NoOptions,
))
