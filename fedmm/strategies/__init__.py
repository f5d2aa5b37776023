"""Strategies by name: federated ones (Flower strategies) and references (run without a federation).

A federated strategy is a server-side builder plus the local update its hospitals run
(`Personalization`); the client looks the latter up by the same name.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedmm.config import ConfigError, ExperimentConfig
from fedmm.strategies.centralized import run_centralized
from fedmm.strategies.fedavg import HospitalFedAvg
from fedmm.strategies.local import run_local
from fedmm.strategies.server_optimizers import ServerAdam, ServerMomentum, ServerOptimizer, ServerYogi
from fedmm.training.personalized import Personalization

# (cfg, FederatedData, common kwargs) -> a HospitalFedAvg, or one wrapped for client-level DP
Builder = Callable[[ExperimentConfig, Any, dict[str, Any]], Any]


@dataclass(frozen=True)
class StrategySpec:
    build: Builder
    personalization: Personalization = Personalization.NONE
    exchanges: str = "weights"  # what a hospital sends: "weights" (of the shared part) or "embeddings"


def averaging(optimizer: type[ServerOptimizer] | None, modality_aware: bool, proximal: bool = False) -> Builder:
    """FedAvg, FedProx, FedAvgM, FedAdam or FedYogi, plain or modality-aware."""

    def build(cfg: ExperimentConfig, data: Any, common: dict[str, Any]) -> Any:
        server_optimizer = optimizer(cfg.strategy.server) if optimizer is not None else None
        client_dp = cfg.privacy.client.clipping != "none"
        # Client-level DP: the inner strategy averages uniformly, the server optimizer steps after the noise.
        options = dict(common, modality_aware=modality_aware, uniform_weights=client_dp,
                       server_optimizer=None if client_dp else server_optimizer)
        if proximal:
            from fedmm.strategies.fedprox import FedProx

            strategy = FedProx(**options, proximal_mu=cfg.strategy.proximal_mu)
        else:
            strategy = HospitalFedAvg(**options)
        if not client_dp:
            return strategy
        from fedmm.privacy.client_level import ClientLevelDP

        return ClientLevelDP(strategy, cfg.privacy.client, server_optimizer,
                             stop_run_at_budget=cfg.privacy.on_budget == "stop_run", seed=cfg.seed)

    return build


def shared_base(cfg: ExperimentConfig, data: Any, common: dict[str, Any]) -> HospitalFedAvg:
    from fedmm.strategies.fedper import SharedBaseFedAvg

    return SharedBaseFedAvg(**common, modality_aware=True)


def distillation(cfg: ExperimentConfig, data: Any, common: dict[str, Any]) -> HospitalFedAvg:
    from fedmm.hospitals import load_reference
    from fedmm.models.features import resolve_device
    from fedmm.models.heads import build_heads
    from fedmm.strategies.feddistill import FedDistill

    heads = build_heads(data.image_dim, data.report_dim, cfg.heads, seed=0).to(resolve_device(cfg.device))
    return FedDistill(**common, heads=heads, reference=load_reference(cfg), distill=cfg.strategy.distill,
                      train=cfg.train)


SERVER_OPTIMIZERS = {"fedavg": None, "fedavgm": ServerMomentum, "fedadam": ServerAdam, "fedyogi": ServerYogi}
FEDERATED_STRATEGIES: dict[str, StrategySpec] = {
    **{name: StrategySpec(averaging(optimizer, False)) for name, optimizer in SERVER_OPTIMIZERS.items()},
    **{f"{name}_modality": StrategySpec(averaging(optimizer, True)) for name, optimizer in SERVER_OPTIMIZERS.items()},
    "fedprox": StrategySpec(averaging(None, False, proximal=True)),
    "fedprox_modality": StrategySpec(averaging(None, True, proximal=True)),
    "feddistill": StrategySpec(distillation, Personalization.DISTILL, exchanges="embeddings"),
    "fedper": StrategySpec(shared_base, Personalization.FEDPER),
    "fedrep": StrategySpec(shared_base, Personalization.FEDREP),
    "ditto": StrategySpec(averaging(None, True), Personalization.DITTO),
    "finetune": StrategySpec(averaging(None, True), Personalization.FINETUNE),
}
REFERENCE_RUNS: dict[str, Callable] = {
    "centralized": run_centralized,
    "local": run_local,
}
STRATEGY_NAMES = tuple(sorted(FEDERATED_STRATEGIES)) + tuple(sorted(REFERENCE_RUNS))


# Strategies whose whole state is on the server (global heads, optimizer moments, accountants), so a run
# can continue from a checkpoint; the hospital-side DP-SGD ledger is kept by the hospitals themselves.
RESUMABLE = tuple(name for name, spec in FEDERATED_STRATEGIES.items()
                  if spec.personalization is Personalization.NONE and spec.exchanges == "weights")


def is_resumable(name: str) -> bool:
    return name in RESUMABLE


def check_strategy(name: str) -> None:
    if name not in STRATEGY_NAMES:
        raise ConfigError(f"strategy.name={name!r} is unknown; valid: {list(STRATEGY_NAMES)}")


def is_reference(name: str) -> bool:
    check_strategy(name)
    return name in REFERENCE_RUNS


def strategy_spec(name: str) -> StrategySpec:
    check_strategy(name)
    if name in REFERENCE_RUNS:
        raise ConfigError(f"strategy.name={name!r} is a reference run without a federation; run it with `fedmm run`")
    return FEDERATED_STRATEGIES[name]


def build_strategy(cfg: ExperimentConfig, data: Any, **common: Any) -> Any:
    """The server-side strategy of `cfg.strategy.name`; `common` holds the sampling and round settings."""
    return strategy_spec(cfg.strategy.name).build(cfg, data, common)
