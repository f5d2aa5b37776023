"""The Ray engine: Flower's Simulation Engine, one virtual node (a Ray actor) per hospital."""

import logging
import os

import torch
from flwr.clientapp.typing import Mod

from fedmm.clients.app import make_client_app
from fedmm.config import ExperimentConfig
from fedmm.runs.recorder import RoundCallback
from fedmm.server.app import make_server_app


def backend_config(cfg: ExperimentConfig, verbose: bool = False) -> dict:
    """Ray resources: each hospital gets `client_cpus` CPUs and `client_gpus` of a GPU (fractions share one)."""
    num_gpus = torch.cuda.device_count() if cfg.simulation.client_gpus > 0 else 0
    return {
        "client_resources": {"num_cpus": cfg.simulation.client_cpus, "num_gpus": cfg.simulation.client_gpus},
        "init_args": {"num_cpus": os.cpu_count() or 1, "num_gpus": num_gpus, "log_to_driver": verbose,
                      "logging_level": logging.INFO if verbose else logging.ERROR},
    }


def run_on_ray(cfg: ExperimentConfig, on_round: RoundCallback | None = None, verbose: bool = False,
                      client_mods: list[Mod] | None = None) -> dict:
    """Run `cfg` with the same ServerApp and ClientApp that `flwr run` uses; returns the run's summary.
    `client_mods` are Flower mods wrapped around every hospital's handlers."""
    from flwr.simulation import run_simulation

    results: list[dict] = []
    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)  # the progress bar says what Flower's INFO lines would
    try:
        run_simulation(
            server_app=make_server_app(cfg, on_round, results),
            client_app=make_client_app(cfg, client_mods),
            num_supernodes=cfg.scenario.num_hospitals,
            backend_config=backend_config(cfg, verbose),
        )
    finally:
        flwr_logger.setLevel(previous_level)
    if not results:
        raise RuntimeError("the simulation ended without a result; rerun with --verbose to see Flower's log")
    return results[0]
