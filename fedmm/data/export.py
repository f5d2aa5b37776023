"""Write the built-in synthetic federation as hospital folders, one per hospital, plus the server's test set.

The folders hold exactly what each simulated hospital holds: its train and local-test studies, with a
missing modality left out of the folder (no image file, or an empty report), and the finding labels.
"""

from pathlib import Path

from fedmm.config import ExperimentConfig
from fedmm.data.hospital_folder import write_hospital_folder
from fedmm.data.modality import AVAILABILITY_CODES, Availability
from fedmm.data.partition import partition_dataset
from fedmm.data.registry import load_dataset
from fedmm.validation import validate_config

CODE_OF = {code: availability for availability, code in AVAILABILITY_CODES.items()}
SERVER_FOLDER = "server-test"


def export_synthetic(cfg: ExperimentConfig, out: Path) -> list[Path]:
    """`out/hospital-<id>/` for every hospital of `cfg`'s federation and `out/server-test/` (the global test
    set, all paired). Returns the folders written. A study's patient is the study itself."""
    validate_config(cfg)
    dataset = load_dataset(cfg.dataset, cfg.cache_path)
    federation = partition_dataset(dataset.labels, cfg.scenario, cfg.dataset.global_test_fraction, cfg.seed)
    folders = []
    for hospital in federation.hospitals:
        rows = [(int(i), CODE_OF[int(code)], split)
                for indices, codes, split in ((hospital.train_indices, hospital.train_availability, "train"),
                                              (hospital.test_indices, hospital.test_availability, "test"))
                for i, code in zip(indices, codes)]
        folders.append(_write(out / f"hospital-{hospital.hospital_id}", dataset, rows))
    rows = [(int(i), Availability.PAIRED, "test") for i in federation.global_test_indices]
    folders.append(_write(out / SERVER_FOLDER, dataset, rows))
    return folders


def _write(folder: Path, dataset, rows: list[tuple[int, Availability, str]]) -> Path:
    ids = [f"s{index:06d}" for index, _, _ in rows]
    return write_hospital_folder(
        folder, ids, ids,
        [dataset.images[i] if availability.has_image else None for i, availability, _ in rows],
        [dataset.reports[i] if availability.has_report else None for i, availability, _ in rows],
        [split for _, _, split in rows], dataset.labels[[i for i, _, _ in rows]])
