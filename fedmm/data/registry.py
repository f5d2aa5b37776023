"""Datasets by name. Each builder takes the dataset config and the cache directory."""

from collections.abc import Callable
from pathlib import Path

from fedmm.config import ConfigError, DatasetConfig
from fedmm.data.dataset import MultimodalDataset
from fedmm.data.synthetic import load_synthetic_cxr

DATASETS: dict[str, Callable[[DatasetConfig, Path], MultimodalDataset]] = {
    "synthetic_cxr": lambda cfg, cache_dir: load_synthetic_cxr(cfg.num_samples, cfg.image_size, cfg.seed, cache_dir),
}


def check_dataset(cfg: DatasetConfig) -> None:
    if cfg.name not in DATASETS:
        raise ConfigError(f"dataset.name={cfg.name!r} is unknown; valid: {sorted(DATASETS)}")
    if cfg.num_samples < 1:
        raise ConfigError(f"dataset.num_samples={cfg.num_samples} must be positive")


def load_dataset(cfg: DatasetConfig, cache_dir: Path) -> MultimodalDataset:
    check_dataset(cfg)
    return DATASETS[cfg.name](cfg, cache_dir)
