"""What a strategy is, in one record: its server side, its hospitals' local update, what leaves a hospital,
which privacy modes it supports and its options.

Each strategy's file builds one `StrategySpec` and registers it with `register`; the registry finds the
files itself (every module of `fedmm.strategies` and `fedmm.baselines`), so nothing else in fedmm names
a strategy.
"""

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fedmm.config import ConfigError, ExperimentConfig, parse_section
from fedmm.strategies.base import FederatedStrategy
from fedmm.strategies.roster import Roster
from fedmm.training.updates import LocalStep, LocalUpdate, StateDict


class Exchange(str, Enum):
    """What a hospital sends the server after training."""

    WEIGHTS = "weights"  # (the shared part of) its heads
    EMBEDDINGS = "embeddings"  # its embeddings of the public reference set (federated distillation)


class PrivacyMode(str, Enum):
    SAMPLE = "sample"  # DP-SGD inside the local update (privacy.sample)
    CLIENT = "client"  # Flower's client-level DP wrappers around a uniform average (privacy.client)


@dataclass(frozen=True)
class NoOptions:
    """A strategy without options of its own."""


# (cfg, its typed options, server data, the run's Roster) -> the Flower strategy that runs the rounds
ServerBuilder = Callable[[ExperimentConfig, Any, Any, "Roster"], "FederatedStrategy"]
# (the hospital's step, the received arrays, its private state or None) -> what it sends and keeps
LocalUpdateFn = Callable[[LocalStep, StateDict, StateDict | None], LocalUpdate]
# (step, received arrays, private state) -> the heads the hospital itself would use, for evaluation
PersonalModelFn = Callable[[LocalStep, StateDict, StateDict | None], Any]
# (cfg, FederatedData, RunRecorder) -> final heads state: a run without a federation
ReferenceRun = Callable[[ExperimentConfig, Any, Any], dict]


@dataclass(frozen=True)
class StrategySpec:
    name: str  # the value of strategy.name, and of configs/strategy/<name>.yaml
    description: str  # one line: what it does, and the paper
    build_server: ServerBuilder | None = None  # None: a reference run (`run_reference`)
    local_update: LocalUpdateFn | None = None  # None: its hospitals answer another message (distillation)
    personal_model: PersonalModelFn | None = None  # None: hospitals are judged on the global model only
    run_reference: ReferenceRun | None = None  # a run without a federation (centralized, local)
    exchanges: Exchange = Exchange.WEIGHTS
    privacy: frozenset[PrivacyMode] = frozenset()
    averages_weights: bool = False  # strategy.modality_aware applies (and must be set)
    robust_aggregation: bool = False  # `aggregator` (median, trimmed mean, Krum) may replace its mean
    has_global_model: bool = True  # False: the server holds only a shared part (FedPer, FedRep)
    keeps_private_state: bool = False  # hospitals keep parameters between rounds that never leave them
    extra_arrays: tuple[str, ...] = ()  # further ArrayRecords in a training reply, by name (SCAFFOLD's variates)
    resumable: bool = False  # its whole state is on the server, so `resume=true` can continue a run
    needs_reference: bool = False  # reads the public reference set
    options: type = NoOptions  # a frozen dataclass of the strategy's own keys in its config group
    check: Callable[[ExperimentConfig, Any], None] | None = field(default=None, repr=False)  # (cfg, options)

    @property
    def is_reference(self) -> bool:
        return self.run_reference is not None

    def parse_options(self, cfg: ExperimentConfig) -> Any:
        """The typed options of `cfg.strategy` (every key of its group but name and modality_aware)."""
        return parse_section(self.options, dict(cfg.strategy.options), "strategy")

    def validate(self, cfg: ExperimentConfig) -> None:
        """The settings this strategy cannot run with, named with their fix."""
        options = self.parse_options(cfg)
        modality_aware = cfg.strategy.modality_aware
        if self.averages_weights and modality_aware is None:
            raise ConfigError(f"strategy {self.name!r} averages weights: set strategy.modality_aware=true (each head "
                              "averaged over the hospitals that trained it) or false (plain weighted average)")
        if not self.averages_weights and modality_aware:
            raise ConfigError(f"strategy.modality_aware=true does not apply to {self.name!r}, which averages no "
                              "weights; leave it out")
        if cfg.privacy.sample.enabled and PrivacyMode.SAMPLE not in self.privacy:
            raise ConfigError(f"privacy.sample (DP-SGD) is not wired to {self.name!r}'s local update; strategies "
                              f"that support it: {supporting(PrivacyMode.SAMPLE)}")
        if cfg.privacy.client.clipping != "none":
            if PrivacyMode.CLIENT not in self.privacy:
                raise ConfigError(f"privacy.client.clipping={cfg.privacy.client.clipping!r} needs a uniformly averaged "
                                  f"strategy, one of {supporting(PrivacyMode.CLIENT)}; {self.name!r} weights or splits "
                                  "hospitals' updates differently than the noise is calibrated to")
            if modality_aware:
                raise ConfigError("privacy.client needs strategy.modality_aware=false: modality-aware groups are "
                                  "averaged over fewer hospitals than the noise is calibrated to")
        if cfg.aggregator.name != "mean":
            if not self.robust_aggregation:
                raise ConfigError(f"aggregator={cfg.aggregator.name} replaces the mean of the averaging strategies "
                                  f"{[s.name for s in _specs() if s.robust_aggregation]}; {self.name!r} combines "
                                  "hospitals its own way: use aggregator=mean")
            if cfg.privacy.client.clipping != "none":
                raise ConfigError(f"aggregator={cfg.aggregator.name} with privacy.client: client-level DP's noise is "
                                  "calibrated to the uniform mean; use aggregator=mean")
        if cfg.resume and not self.resumable:
            raise ConfigError(f"resume=true: strategy {self.name!r} keeps state at the hospitals or in the server's "
                              f"distillation; resuming is supported for {[s.name for s in _specs() if s.resumable]}")
        if self.check is not None:
            self.check(cfg, options)


_REGISTRY: dict[str, StrategySpec] = {}
_DISCOVERED: list[str] = []  # the packages whose files have been imported
PACKAGES = ("fedmm.strategies", "fedmm.baselines")  # where strategy files live


def register(spec: StrategySpec) -> StrategySpec:
    """Add `spec` to the registry (a strategy file calls this once, at import)."""
    if _REGISTRY.get(spec.name, spec) is not spec:
        raise ValueError(f"two strategies are named {spec.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def _specs() -> list[StrategySpec]:
    """Every registered strategy, sorted by name; the strategy files are imported on first use."""
    for package in PACKAGES:
        if package not in _DISCOVERED:
            _DISCOVERED.append(package)
            module = importlib.import_module(package)
            for info in pkgutil.iter_modules(module.__path__):
                importlib.import_module(f"{package}.{info.name}")
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def all_strategies() -> list[StrategySpec]:
    return _specs()


def strategy_names() -> list[str]:
    return [spec.name for spec in _specs()]


def strategy_spec(name: str) -> StrategySpec:
    """The strategy called `name`; an unknown name lists the valid ones."""
    specs = {spec.name: spec for spec in _specs()}
    if name not in specs:
        raise ConfigError(f"strategy.name={name!r} is unknown; valid: {sorted(specs)}")
    return specs[name]


def strategy_options(cfg: ExperimentConfig) -> Any:
    """The typed options of the configured strategy."""
    return strategy_spec(cfg.strategy.name).parse_options(cfg)


def supporting(mode: PrivacyMode) -> list[str]:
    return [spec.name for spec in _specs() if mode in spec.privacy]
