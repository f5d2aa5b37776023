"""FedAvg: hospitals train the received heads locally; the server averages them.

McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data"
(AISTATS). With `strategy.modality_aware=true` each head group is averaged only over the hospitals that
trained it (see `fedmm.strategies.base`). `build_averaging` is the server side of every strategy that
averages weights, with client-level DP wrapped around it when `privacy.client` asks for it.
"""

from typing import Any

from fedmm.config import ExperimentConfig
from fedmm.strategies.base import HospitalFedAvg
from fedmm.strategies.roster import Roster
from fedmm.strategies.spec import NoOptions, PrivacyMode, StrategySpec, register
from fedmm.training.bank import bank_update, uses_reference_bank
from fedmm.training.updates import LocalStep, LocalUpdate, StateDict, global_update


def build_averaging(cfg: ExperimentConfig, roster: Roster, server_optimizer: Any = None,
                    strategy_class: type[HospitalFedAvg] = HospitalFedAvg, **extra: Any) -> Any:
    """An averaging `strategy_class` over `roster`'s hospitals (`server_optimizer` after the average); under
    client-level DP the inner average is uniform and the optimizer steps after Flower's noise (`ClientLevelDP`)."""
    client_dp = cfg.privacy.client.clipping != "none"
    strategy = strategy_class(roster, **extra, modality_aware=bool(cfg.strategy.modality_aware),
                              uniform_weights=client_dp, server_optimizer=None if client_dp else server_optimizer,
                              aggregator=cfg.aggregator)
    if cfg.secagg.enabled:  # with client-level DP (client_fixed), SecAgg adds the noise to the unmasked sum
        from fedmm.strategies.secagg import SecureAggregation

        return SecureAggregation(strategy, cfg.secagg, seed=cfg.seed,
                                 dp=cfg.privacy.client if client_dp else None, server_optimizer=server_optimizer)
    if not client_dp:
        return strategy
    from fedmm.strategies.client_dp import ClientLevelDP

    return ClientLevelDP(strategy, cfg.privacy.client, server_optimizer, seed=cfg.seed)


def averaging_update(step: LocalStep, received: StateDict, personal: StateDict | None) -> LocalUpdate:
    """FedAvg's local step: train the received heads (under DP-SGD, on the reference-bank objective)."""
    if uses_reference_bank(step.cfg):
        return bank_update(step.heads, received, step.data, step.load_reference(), step.cfg, step.seed, step.device,
                           step.dpsgd, step.clock)
    return global_update(step, received)


SPEC = register(StrategySpec(
    name="fedavg",
    description="FedAvg (McMahan et al., 2017): heads averaged by training-set size, or per modality",
    build_server=lambda cfg, options, data, roster: build_averaging(cfg, roster),
    local_update=averaging_update,
    privacy=frozenset(PrivacyMode),
    averages_weights=True,
    robust_aggregation=True,
    resumable=True,
    options=NoOptions,
))
