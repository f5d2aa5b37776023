"""The bridge between Flower's run config and the Hydra configs: the run config carries only names.

`flwr run . --run-config 'experiment="smoke" overrides="federation.rounds=3 seed=1"'` composes the same
`ExperimentConfig` as `fedmm run +experiment=smoke federation.rounds=3 seed=1`;
`--run-config 'config-file="RUN_DIR/config.yaml"'` loads a resolved one (how the Ray engine passes its run).
"""

import shlex
from collections.abc import Mapping
from functools import lru_cache

from fedmm.compose import compose_config, load_config_file
from fedmm.config import ExperimentConfig


@lru_cache(maxsize=8)
def _compose(experiment: str, overrides: str) -> ExperimentConfig:
    from fedmm.federation import resolve_hospitals  # scenario=natural: one hospital per site

    return resolve_hospitals(compose_config(shlex.split(overrides), experiment or None))


@lru_cache(maxsize=8)
def _load(path: str) -> ExperimentConfig:
    return load_config_file(path)


def config_from_run_config(run_config: Mapping[str, object]) -> ExperimentConfig:
    if run_config.get("config-file"):
        return _load(str(run_config["config-file"]))
    return _compose(str(run_config.get("experiment", "")), str(run_config.get("overrides", "")))
