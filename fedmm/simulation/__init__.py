"""Run a federated strategy on one machine, one simulated hospital per node, on the engine
`simulation.engine` names: `ray` (Flower's Simulation Engine through a private SuperLink and `flwr run`,
`ray.py`), `pool` (a few long-lived worker processes serving every hospital, `pool.py`) or `inprocess`
(`inprocess.py`)."""

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fedmm.config import ConfigError, ExperimentConfig

if TYPE_CHECKING:
    from fedmm.runs.recorder import RoundCallback

ENGINES = ("ray", "pool", "inprocess")


class SimulationFailed(RuntimeError):
    """The simulation runtime ended a run as failed (a crashed engine, a lost hospital): the message names the
    root cause from Flower's log and where that log was kept."""


def check_engine(cfg: ExperimentConfig) -> None:
    simulation = cfg.simulation
    if simulation.engine not in ENGINES:
        raise ConfigError(f"simulation.engine={simulation.engine!r} is unknown; valid: {list(ENGINES)}")
    if simulation.ray_address and simulation.engine != "ray":
        raise ConfigError(f"simulation.ray_address={simulation.ray_address!r} (or $RAY_ADDRESS) names a Ray cluster, "
                          f"but simulation.engine={simulation.engine} runs on this machine only; add "
                          "simulation.engine=ray to run on the cluster, or unset RAY_ADDRESS")
    if simulation.client_gpus > 0 and simulation.engine != "ray":
        raise ConfigError(f"simulation.client_gpus > 0 needs simulation.engine=ray (the {simulation.engine} engine "
                          "shares no GPU between hospitals); or set device=cuda to use one GPU in-process")


def run_in_simulation(cfg: ExperimentConfig, on_round: "RoundCallback | None" = None, verbose: bool = False,
                      client_mods: list | None = None) -> dict:
    """Run `cfg` with the same ServerApp logic and ClientApp that `flwr run` uses; returns the run's summary.
    `client_mods` are Flower mods wrapped around every hospital's handlers."""
    import torch

    check_engine(cfg)
    if cfg.simulation.client_gpus > 0 and not torch.cuda.is_available():
        raise ConfigError(f"simulation.client_gpus={cfg.simulation.client_gpus} but no GPU is visible; set it to 0")
    if client_mods and cfg.simulation.engine != "inprocess":
        raise ConfigError(f"client mods are Python objects and reach hospitals only on simulation.engine=inprocess; "
                          f"under simulation.engine={cfg.simulation.engine} the ClientApp runs in other processes")
    if cfg.simulation.engine == "ray":
        from fedmm.simulation.ray import run_on_ray

        return run_on_ray(cfg, on_round, verbose)
    from fedmm.server.federated import run_federated

    results: list[dict] = []
    with flower_log_level(logging.DEBUG if verbose else logging.WARNING):
        if cfg.simulation.engine == "pool":
            from fedmm.simulation.pool import run_in_pool

            run_in_pool(lambda grid: results.append(run_federated(grid, cfg, on_round)), cfg,
                        cfg.scenario.num_hospitals)
        else:
            from fedmm.clients.app import make_client_app
            from fedmm.simulation.inprocess import run_in_process

            run_in_process(lambda grid: results.append(run_federated(grid, cfg, on_round)),
                           make_client_app(cfg, client_mods), cfg.scenario.num_hospitals)
    return results[0]


@contextmanager
def flower_log_level(level: int):
    """Flower's logger at `level` while the server logic runs in this process (its per-round INFO lines
    would bury the progress bar; the Ray engine keeps them in Flower's log instead), then as it was."""
    logger = logging.getLogger("flwr")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
