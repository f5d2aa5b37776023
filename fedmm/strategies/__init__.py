"""Strategies by name: federated ones (Flower strategies) and references (run without a federation)."""

from collections.abc import Callable

from fedmm.config import ConfigError
from fedmm.strategies.centralized import run_centralized
from fedmm.strategies.fedavg import HospitalFedAvg
from fedmm.strategies.fedavg_modality import FedAvgModality
from fedmm.strategies.local import run_local

FEDERATED_STRATEGIES: dict[str, type[HospitalFedAvg]] = {
    "fedavg": HospitalFedAvg,
    "fedavg_modality": FedAvgModality,
}
REFERENCE_RUNS: dict[str, Callable] = {
    "centralized": run_centralized,
    "local": run_local,
}
STRATEGY_NAMES = tuple(sorted(FEDERATED_STRATEGIES)) + tuple(sorted(REFERENCE_RUNS))


def check_strategy(name: str) -> None:
    if name not in STRATEGY_NAMES:
        raise ConfigError(f"strategy.name={name!r} is unknown; valid: {list(STRATEGY_NAMES)}")


def is_reference(name: str) -> bool:
    check_strategy(name)
    return name in REFERENCE_RUNS


def build_strategy(name: str, **kwargs) -> HospitalFedAvg:
    check_strategy(name)
    if name in REFERENCE_RUNS:
        raise ConfigError(f"strategy.name={name!r} is a reference run without a federation; run it with `fedmm run`")
    return FEDERATED_STRATEGIES[name](**kwargs)
