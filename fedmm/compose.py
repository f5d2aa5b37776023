"""Compose an `ExperimentConfig` from the Hydra configs in `configs/`, or reload a saved one."""

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from fedmm.config import ConfigError, ExperimentConfig, parse_config

CONFIG_DIR = Path(os.environ.get("FEDMM_CONFIG_DIR", Path(__file__).resolve().parent.parent / "configs"))

# Options added after runs were saved without them, each with the value that reproduces those runs. A saved
# config.yaml that lacks one (written by an older fedmm) gets that value wherever the option's section is there,
# so `fedmm run --config-file`, `--resume` and a sweep's reuse of finished cells keep working across upgrades.
# A new option whose default changes nothing belongs here (docs/extending.md, "Adding an option").
ADDED_OPTIONS: dict[str, Any] = {
    "strategy.distill.server_contrastive_epochs": 0,  # feddistill: the server only distills
}


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` (a run's config.yaml, as loaded) with every option of `ADDED_OPTIONS` it lacks, where its section
    is there (a fedavg run has no `strategy.distill` and gets none)."""
    upgraded = copy.deepcopy(saved)
    for dotted, value in ADDED_OPTIONS.items():
        *parents, option = dotted.split(".")
        section: Any = upgraded
        for key in parents:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict) and option not in section:
            section[option] = value
    return upgraded


def compose_config(overrides: Sequence[str] = (), experiment: str | None = None) -> ExperimentConfig:
    """`configs/config.yaml` + an optional `configs/experiment/<experiment>.yaml` + Hydra overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not (CONFIG_DIR / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in {CONFIG_DIR}; set FEDMM_CONFIG_DIR to the project's configs/ folder")
    everything = ([f"+experiment={experiment}"] if experiment else []) + list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            composed = compose("config", overrides=everything)
        data = OmegaConf.to_container(composed, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_describe(error)) from error
    finally:
        GlobalHydra.instance().clear()
    return parse_config(data)


def _describe(error: BaseException) -> str:
    """Hydra often wraps the useful message (e.g. a bad interpolation) in an empty exception: unwrap it."""
    messages = []
    while error is not None:
        if str(error).strip() and str(error).strip() not in messages:
            messages.append(str(error).strip())
        error = error.__cause__
    return " <- ".join(messages) or "could not compose the configuration"


def load_config_file(path: Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """A run's saved `config.yaml`, with `key=value` overrides (dotted keys) applied on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config-file {str(path)!r}: no such file")
    try:
        base = OmegaConf.create(upgrade_saved_config(yaml.safe_load(path.read_text())))
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except Exception as error:  # yaml or OmegaConf syntax errors
        raise ConfigError(f"--config-file {str(path)!r}: {error}") from error
    return parse_config(OmegaConf.to_container(merged, resolve=True))
