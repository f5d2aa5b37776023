"""Datasets by name. Each builder takes the dataset config and the cache directory."""

from collections.abc import Callable
from pathlib import Path

from fedmm.config import ConfigError, DatasetConfig
from fedmm.data.dataset import MultimodalDataset
from fedmm.data.folder_dataset import check_folder_dataset, load_folder_dataset
from fedmm.data.synthetic import load_synthetic_cxr

DATASETS: dict[str, Callable[[DatasetConfig, Path], MultimodalDataset]] = {
    "synthetic_cxr": lambda cfg, cache_dir: load_synthetic_cxr(cfg.num_samples, cfg.image_size, cfg.seed, cache_dir),
    "folder": load_folder_dataset,  # dataset.path=DIR: a manifest.csv and its files (folder_dataset.py)
}
GENERATED = ("synthetic_cxr",)  # datasets drawn from a seed, of `num_samples` studies


def check_dataset(cfg: DatasetConfig) -> None:
    if cfg.name not in DATASETS:
        raise ConfigError(f"dataset.name={cfg.name!r} is unknown; valid: {sorted(DATASETS)}")
    if cfg.name in GENERATED and (cfg.num_samples is None or cfg.num_samples < 1):
        raise ConfigError(f"dataset.num_samples={cfg.num_samples} must be positive")
    if cfg.name == "folder":
        check_folder_dataset(cfg)


def load_dataset(cfg: DatasetConfig, cache_dir: Path) -> MultimodalDataset:
    check_dataset(cfg)
    return DATASETS[cfg.name](cfg, cache_dir)
