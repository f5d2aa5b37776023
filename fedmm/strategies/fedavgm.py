"""FedAvgM: FedAvg's average taken as a pseudo-gradient for server momentum.

Hsu, Qi and Brown, 2019, "Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification" (arXiv:1909.06335). The optimizer is `fedmm.aggregation.server_optimizers`.
"""

from dataclasses import dataclass

from fedmm.aggregation.server_optimizers import MomentumConfig, ServerMomentum
from fedmm.config import ConfigError
from fedmm.strategies.fedavg import averaging_update, build_averaging
from fedmm.strategies.spec import PrivacyMode, StrategySpec, register


@dataclass(frozen=True)
class FedAvgMOptions:
    server: MomentumConfig


def check(cfg, options: FedAvgMOptions) -> None:
    if options.server.lr <= 0:
        raise ConfigError(f"strategy.server.lr={options.server.lr} must be positive")
    if not 0 <= options.server.momentum < 1:
        raise ConfigError(f"strategy.server.momentum={options.server.momentum} must lie in [0, 1)")


SPEC = register(StrategySpec(
    name="fedavgm",
    description="FedAvgM (Hsu et al., 2019): server momentum on the averaged update",
    build_server=lambda cfg, options, data, roster: build_averaging(cfg, roster, ServerMomentum(options.server)),
    local_update=averaging_update,
    privacy=frozenset(PrivacyMode),
    averages_weights=True,
    robust_aggregation=True,
    resumable=True,
    options=FedAvgMOptions,
    check=check,
))
