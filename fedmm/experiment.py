"""Run one experiment end to end, whichever kind its strategy is (federated or reference)."""

import dataclasses

from fedmm.config import ExperimentConfig
from fedmm.federation import load_federated_data, load_reference, resolve_hospitals
from fedmm.privacy.sample_level import plan_all_hospitals
from fedmm.runs.recorder import RoundCallback, RunRecorder, claim_run_dir, default_run_dir
from fedmm.runs.selection import server_splits
from fedmm.strategies import strategy_spec
from fedmm.training.bank import uses_reference_bank
from fedmm.training.missing import needs_reference
from fedmm.validation import validate_config


def run_experiment(cfg: ExperimentConfig, on_round: RoundCallback | None = None, progress: bool = False,
                   verbose: bool = False, client_mods: list | None = None) -> dict:
    """Validate, prepare the caches, run; returns the summary (also in `<run_dir>/summary.json`).
    `client_mods`: Flower mods around every hospital's handlers (federated strategies only)."""
    cfg = resolve_hospitals(cfg)  # scenario=natural: one hospital per site of the dataset
    validate_config(cfg)  # fails before any work
    if cfg.run_dir is None:  # named now, so hospitals know where their state folder is
        cfg = dataclasses.replace(cfg, run_dir=str(default_run_dir(cfg)))
    data = load_federated_data(cfg, progress=progress)  # builds the caches once, before any client reads them
    spec = strategy_spec(cfg.strategy.name)
    if spec.needs_reference or uses_reference_bank(cfg) or needs_reference(cfg.missing):
        load_reference(cfg, progress=progress)  # the same for the reference set's features
    plan_all_hospitals(cfg, data.paired_counts())  # an unreachable privacy target fails here, before training
    if spec.is_reference:
        run_dir = claim_run_dir(cfg)
        _, test = server_splits(cfg, data.global_test())
        recorder = RunRecorder(cfg, data.groups(), test.labels, run_dir, on_round, sites=data.sites())
        state = spec.run_reference(cfg, data, recorder)  # its round loop ends early where recorder.should_stop
        stopped = recorder.selection.stop_reason() if recorder.should_stop else None
        return recorder.finish(state, stopped=stopped) | {"run_dir": str(run_dir)}
    from fedmm.simulation import run_in_simulation

    return run_in_simulation(cfg, on_round, verbose, client_mods)
