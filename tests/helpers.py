"""What tests build configurations from: what a user gets (composed from configs/), changed where a test says."""

import dataclasses
from functools import lru_cache
from typing import Any

from fedmm.compose import compose_config
from fedmm.config import ExperimentConfig


@lru_cache
def user_config(*overrides: str) -> ExperimentConfig:
    """`fedmm run OVERRIDES`'s configuration (composed once per set of overrides)."""
    return compose_config(list(overrides))


def configured(section: str, *overrides: str, **changes: Any) -> Any:
    """The dotted `section` (e.g. "privacy.sample") of `user_config(*overrides)`, with `changes` replaced."""
    value: Any = user_config(*overrides)
    for name in section.split("."):
        value = getattr(value, name)
    return dataclasses.replace(value, **changes)
