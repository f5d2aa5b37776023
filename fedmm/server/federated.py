"""A federated run on a Grid: discover hospitals, run the strategy's rounds, record everything."""

import logging

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmm.config import ConfigError, ExperimentConfig
from fedmm.evaluation.evaluate import Prompts, evaluate_split
from fedmm.federation import load_server_data
from fedmm.models.heads import build_heads
from fedmm.privacy.sample_level import plan_all_hospitals
from fedmm.runs.checkpoint import load_checkpoint, save_checkpoint
from fedmm.runs.recorder import RoundCallback, RunRecorder, claim_run_dir
from fedmm.runs.selection import EarlyStopped
from fedmm.seeding import HEADS_INIT_STREAM, derive_seed
from fedmm.server.discovery import discover_hospitals, group_of
from fedmm.server.folding import FoldingGrid
from fedmm.simulation.conditions import availability
from fedmm.strategies import strategy_spec
from fedmm.strategies.base import Delegating, FederatedStrategy
from fedmm.strategies.roster import HospitalsLost, Roster, RunStopped, sample_size
from fedmm.validation import validate_config

log = logging.getLogger(__name__)


def run_federated(grid: Grid, cfg: ExperimentConfig, on_round: RoundCallback | None = None) -> dict:
    """Run `cfg` over the hospitals connected to `grid`; returns the summary written to the run dir.
    The server reads only its own data (the global test set); what it knows of each hospital (group,
    sample counts) is what that hospital answered to discovery."""
    validate_config(cfg)
    data = load_server_data(cfg)
    node_of_hospital, described = discover_hospitals(grid, data.num_hospitals, cfg.federation.round_timeout_s)
    # Fails before training when a privacy target is unreachable for some hospital's data.
    plan_all_hospitals(cfg, {hospital: int(d["num-paired"]) for hospital, d in described.items()})
    run_dir = claim_run_dir(cfg)
    spec = strategy_spec(cfg.strategy.name)
    checkpoint = load_checkpoint(run_dir) if cfg.resume else None
    done = checkpoint.server_round if checkpoint is not None else 0
    if done >= cfg.federation.rounds:
        raise ConfigError(f"resume: {str(run_dir)!r} already finished round {done}; raise federation.rounds to go on")
    groups = {hospital: group_of(d).value for hospital, d in described.items()}
    recorder = RunRecorder(cfg, groups, data.global_test.labels, run_dir, on_round, resume_round=done,
                           sites=data.sites)

    heads = build_heads(data.image_dim, data.report_dim, cfg.heads, derive_seed(cfg.seed, HEADS_INIT_STREAM))
    roster = Roster(node_of_hospital, seed=cfg.seed,
                    clients_per_round=sample_size(data.num_hospitals, cfg.federation.clients_per_round,
                                                  cfg.federation.fraction_train),
                    evaluate_every=cfg.federation.evaluate_every, num_rounds=cfg.federation.rounds,
                    stop_run_at_budget=cfg.privacy.on_budget == "stop_run",
                    min_hospitals=cfg.federation.min_hospitals, round_timeout_s=cfg.federation.round_timeout_s,
                    availability=availability(cfg.conditions, data.num_hospitals, cfg.seed, cfg.federation.rounds),
                    deadline_s=cfg.conditions.deadline_s, sampling=cfg.federation.sampling)
    strategy: FederatedStrategy = spec.build_server(cfg, spec.parse_options(cfg), data, roster)
    if getattr(strategy, "can_fold_on_arrival", False):  # unwrapped averaging: add each reply as it arrives
        strategy.folds_on_arrival = True
        grid = FoldingGrid(grid, strategy.on_reply)
    global_test, prompts = data.global_test, Prompts.from_features(data.features)

    latest = {"arrays": None}

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Flower calls this after each round's training and federated evaluation (and once before round 1).
        latest["arrays"] = arrays
        if server_round == 0:
            return None
        server_round += done  # Flower counts the rounds of this call; a resumed run goes on from `done`
        round_log = roster.logs[server_round]
        evaluating = roster.is_evaluation_round(server_round)
        global_metrics = validation = None
        if evaluating and strategy.has_global_model:  # FedPer/FedRep: the server holds no complete model
            heads.load_state_dict(arrays.to_torch_state_dict())
            global_metrics = evaluate_split(heads, global_test, prompts)
            if data.validation is not None:
                validation = evaluate_split(heads, data.validation, prompts)
        recorder.record(server_round, round_log.sampled, round_log.train, global_metrics,
                        round_log.evaluate if evaluating else None, round_log.fields(), validation,
                        heads.state_dict() if validation is not None else None)
        if spec.resumable:
            save_checkpoint(run_dir, strategy.checkpoint(server_round, arrays))
        if recorder.should_stop:
            raise EarlyStopped(recorder.selection.stop_reason())
        return MetricRecord(global_metrics) if global_metrics else None

    if checkpoint is not None:
        strategy.restore(checkpoint)
        initial_arrays = ArrayRecord({key: Array(value) for key, value in checkpoint.global_arrays.items()})
        log.info("resuming %s after round %d of %d", run_dir, done, cfg.federation.rounds)
    else:
        initial_arrays = strategy.initial_arrays(heads.state_dict())
    stopped: RunStopped | None = None
    try:
        RoundOffset(strategy, done).start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=cfg.federation.rounds - done,
            timeout=cfg.federation.round_timeout_s,
            train_config=ConfigRecord(),
            evaluate_fn=end_of_round,
        )
    except RunStopped as stop:  # a privacy budget, too few hospitals, early stopping: the rounds so far are kept
        stopped = stop
        log.log(logging.INFO if isinstance(stop, EarlyStopped) else logging.WARNING, "the run stops early: %s", stop)
    final_arrays = latest["arrays"] if latest["arrays"] is not None else initial_arrays
    final_state = {key: torch.as_tensor(value) for key, value in final_arrays.to_torch_state_dict().items()}
    summary = recorder.finish(
        final_state, stopped=str(stopped) if stopped else None, retired=roster.retired, lost=roster.lost
    ) | {"run_dir": str(run_dir)}
    if isinstance(stopped, HospitalsLost):  # the summary is written; the run itself failed
        raise stopped
    return summary


class RoundOffset(Delegating):
    """Runs `strategy` with Flower's round numbers shifted by `offset` (a resumed run's finished rounds)."""

    def __init__(self, strategy: Strategy, offset: int) -> None:
        super().__init__(strategy)
        self.offset = offset

    def round_of(self, server_round: int) -> int:
        return server_round + self.offset
