"""FedAdagrad, FedAdam and FedYogi: adaptive server optimizers on the averaged update.

Reddi et al., 2021, "Adaptive Federated Optimization" (ICLR). The optimizers (with Flower's equations)
are in `fedmm.aggregation.server_optimizers`; the three strategies differ only in the second moment
(FedAdagrad, as Flower's, also has no first moment).
"""

from dataclasses import dataclass

from fedmm.aggregation.server_optimizers import AdagradConfig, AdaptiveConfig, ServerAdagrad, ServerAdam, ServerYogi
from fedmm.config import ConfigError
from fedmm.strategies.fedavg import averaging_update, build_averaging
from fedmm.strategies.spec import PrivacyMode, StrategySpec, register


@dataclass(frozen=True)
class FedOptOptions:
    server: AdaptiveConfig


@dataclass(frozen=True)
class FedAdagradOptions:
    server: AdagradConfig


def check(cfg, options: FedOptOptions | FedAdagradOptions) -> None:
    server = options.server
    for name, value in (("lr", server.lr), ("tau", server.tau)):
        if value <= 0:
            raise ConfigError(f"strategy.server.{name}={value} must be positive")
    for name in ("beta_1", "beta_2"):
        value = getattr(server, name, 0.0)
        if not 0 <= value < 1:
            raise ConfigError(f"strategy.server.{name}={value} must lie in [0, 1)")


def _adaptive(name: str, description: str, optimizer: type, options: type = FedOptOptions) -> StrategySpec:
    return register(StrategySpec(
        name=name,
        description=description,
        build_server=lambda cfg, options, data, roster: build_averaging(cfg, roster, optimizer(options.server)),
        local_update=averaging_update,
        privacy=frozenset(PrivacyMode),
        averages_weights=True,
        robust_aggregation=True,
        resumable=True,
        options=options,
        check=check,
    ))


FEDADAM = _adaptive("fedadam", "FedAdam (Reddi et al., 2021): Adam on the server", ServerAdam)
FEDYOGI = _adaptive("fedyogi", "FedYogi (Reddi et al., 2021): FedAdam with Yogi's additive second moment",
                    ServerYogi)
FEDADAGRAD = _adaptive("fedadagrad", "FedAdagrad (Reddi et al., 2021): Adagrad on the server", ServerAdagrad,
                       FedAdagradOptions)
