"""FedProx: FedAvg whose hospitals add a proximal term (μ/2)·||w - w_global||² to their local objective.

Li et al., 2020, "Federated Optimization in Heterogeneous Networks" (MLSys). As in Flower's `FedProx`,
the server's only change is to send μ in the train config (`proximal-mu`); the hospital adds the term
(`fedmm.training.regularizers.proximal_term`), which keeps its heads near the global ones when its data
(or its modality mix) pulls them elsewhere.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedmm import protocol as keys
from fedmm.config import ConfigError
from fedmm.strategies.base import HospitalFedAvg
from fedmm.strategies.fedavg import build_averaging
from fedmm.strategies.spec import PrivacyMode, StrategySpec, register
from fedmm.training.updates import LocalStep, LocalUpdate, StateDict, global_update


@dataclass(frozen=True)
class FedProxOptions:
    proximal_mu: float  # μ: weight of (μ/2)·||w - w_global||² in the local objective


class FedProx(HospitalFedAvg):
    def __init__(self, *args, proximal_mu: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.proximal_mu = proximal_mu

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[keys.PROXIMAL_MU] = self.proximal_mu
        return super().configure_train(server_round, arrays, config, grid)


def proximal_update(step: LocalStep, received: StateDict, personal: StateDict | None) -> LocalUpdate:
    """FedAvg's local step plus the proximal term, with the μ the server sent."""
    return global_update(step, received, proximal_mu=float(step.round_config.get(keys.PROXIMAL_MU, 0.0)))


def check(cfg, options: FedProxOptions) -> None:
    if options.proximal_mu < 0:
        raise ConfigError(f"strategy.proximal_mu={options.proximal_mu} must be >= 0")


SPEC = register(StrategySpec(
    name="fedprox",
    description="FedProx (Li et al., 2020): FedAvg plus a proximal term in each hospital's objective",
    build_server=lambda cfg, options, data, roster: build_averaging(
        cfg, roster, strategy_class=FedProx, proximal_mu=options.proximal_mu),
    local_update=proximal_update,
    privacy=frozenset({PrivacyMode.CLIENT}),
    averages_weights=True,
    robust_aggregation=True,
    resumable=True,
    options=FedProxOptions,
    check=check,
))
