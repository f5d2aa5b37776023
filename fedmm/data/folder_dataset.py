"""A dataset read from one folder: `dataset=folder dataset.path=DIR`.

    DIR/manifest.csv   the hospital-folder format (`hospital_folder.py`: study_id, patient_id, image,
                       report or report_file, split), plus
        site           optional: the institution a study comes from (`scenario=natural`: one hospital each)
        <label> ...    every other column is a label of the dataset's own vocabulary: 1, 0 or empty
                       (unknown); `dataset.labels` picks some of them instead
    DIR/prompts.yaml   optional zero-shot prompts per label (or `dataset.prompts`):
                           effusion: {positive: [Pleural effusion.], negative: [No pleural effusion.]}
                       a label without an entry gets generic prompts ("Effusion." / "No effusion.")

The manifest's `test` studies with both modalities are the server's global test set; its `train` studies
are partitioned into hospitals, by patient (`partition.py`). A study missing a modality on disk lacks it in
every hospital. Images (PNG, JPEG, DICOM, any size and aspect) are decoded once, while the folder is
validated on a feature-cache miss, and fitted to `dataset.image_size` keeping their aspect (padded with black).
"""

import hashlib
from pathlib import Path

import numpy as np
import yaml

from fedmm.config import ConfigError, DatasetConfig
from fedmm.data.dataset import MultimodalDataset
from fedmm.data.findings import Finding
from fedmm.data.hospital_folder import (
    MANIFEST,
    Problem,
    _raise_problems,
    _read_manifest,
    folder_fingerprint,
    index_hospital_folder,
    label_columns,
    validate_hospital_folder,
)

SITE_COLUMN = "site"
PROMPTS_FILE = "prompts.yaml"


def check_folder_dataset(cfg: DatasetConfig) -> None:
    if cfg.path in (None, "???"):  # ???: Hydra's "must be given", as configs/dataset/folder.yaml leaves it
        raise ConfigError("dataset=folder needs dataset.path=DIR (a directory with a manifest.csv)")
    if not (Path(cfg.path) / MANIFEST).is_file():
        raise ConfigError(f"dataset.path={cfg.path!r}: no {MANIFEST} there; see docs/data.md for the format "
                          "(or write one with `fedmm data import-iu` / `fedmm data export-synthetic`)")
    if cfg.prompts is not None and not Path(cfg.prompts).is_file():
        raise ConfigError(f"dataset.prompts={cfg.prompts!r}: no such file")


def load_folder_dataset(cfg: DatasetConfig, cache_dir: Path | None = None) -> MultimodalDataset:
    """The folder's studies; images are decoded (and every file validated) only when first read."""
    check_folder_dataset(cfg)
    folder = Path(cfg.path)
    manifest = _read_manifest(folder)
    header = [] if isinstance(manifest, Problem) else manifest[0]
    optional = (SITE_COLUMN,) if SITE_COLUMN in header else ()
    index = index_hospital_folder(folder, labels=cfg.labels, optional=optional)  # the cells; raises if unreadable
    columns, rows = manifest
    vocabulary = label_columns(columns, cfg.labels, optional)
    findings = read_prompts(prompts_path(cfg), vocabulary)
    if cfg.num_samples is not None and cfg.num_samples != len(rows):
        raise ConfigError(f"dataset.num_samples={cfg.num_samples}, but {folder / MANIFEST} lists {len(rows)} "
                          "studies; set dataset.num_samples=null to use them all")
    digest = hashlib.sha256(f"{folder_fingerprint(folder, cfg.image_size)}:{vocabulary}:pad".encode())
    reports = tuple(_report_text(folder, row) for row in rows)
    return MultimodalDataset(
        name=f"folder:{folder.resolve().name}",
        fingerprint=digest.hexdigest()[:20],
        images=FolderImages(folder, cfg.image_size, len(rows), cfg.labels, optional),
        reports=reports,
        labels=index.labels,
        findings=findings,
        availability=index.availability,
        patients=tuple(row["patient_id"].strip() for row in rows),
        sites=tuple(row[SITE_COLUMN].strip() for row in rows) if optional else None,
        splits=index.split,
    )


def _report_text(folder: Path, row: dict[str, str]) -> str:
    """The report, or "" where the study has none (its features are never read)."""
    if row["report"].strip():
        return row["report"].strip()
    relative = row["report_file"].strip()
    if relative and (folder / relative).is_file():
        return (folder / relative).read_text(encoding="utf-8", errors="replace").strip()
    return ""  # a missing file: validation names it before any feature is computed


class FolderImages:
    """(N, S, S) uint8 images of a folder, decoded on first access: every file is validated (all problems
    named at once, `fedmm data validate DIR`), decoded once and fitted to S x S keeping its aspect."""

    def __init__(self, folder: Path, size: int, count: int, labels: tuple[str, ...] | None,
                 optional: tuple[str, ...]) -> None:
        self.folder, self.size, self.count, self.labels, self.optional = folder, size, count, labels, optional
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, item):
        return self.materialize()[item]

    def materialize(self) -> np.ndarray:
        if self._pixels is None:
            pixels = np.zeros((self.count, self.size, self.size), np.uint8)  # a study without an image: black

            def keep(row: int, image: np.ndarray) -> None:
                pixels[row - 1] = fit_square(image, self.size)

            problems = validate_hospital_folder(self.folder, keep, labels=self.labels, optional=self.optional)
            if problems:
                _raise_problems(self.folder, problems)
            self._pixels = pixels
        return self._pixels


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side is `size` (aspect kept), then pad the shorter one with black, centred."""
    from PIL import Image, ImageOps

    return np.asarray(ImageOps.pad(Image.fromarray(image), (size, size), Image.Resampling.BILINEAR, color=0))


def prompts_path(cfg: DatasetConfig) -> Path | None:
    if cfg.prompts is not None:
        return Path(cfg.prompts)
    default = Path(cfg.path) / PROMPTS_FILE
    return default if default.is_file() else None


def read_prompts(path: Path | None, vocabulary: tuple[str, ...]) -> tuple[Finding, ...]:
    """One `Finding` per label column: its prompts from the YAML file, or generic ones."""
    given: dict = {}
    if path is not None:
        try:
            given = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(given, dict):
            raise ConfigError(f"{path}: expected a mapping label -> {{positive: [...], negative: [...]}}")
        unknown = sorted(set(given) - set(vocabulary))
        if unknown:
            raise ConfigError(f"{path}: prompts for {unknown}, which are not label columns of the manifest "
                              f"({list(vocabulary)}); fix the label name or remove the entry")
    findings = []
    for name in vocabulary:
        entry = given.get(name)
        if entry is None:
            words = name.replace("_", " ")
            findings.append(Finding(name, (f"{words.capitalize()}.",), (f"No {words}.",)))
            continue
        if not isinstance(entry, dict) or set(entry) != {"positive", "negative"}:
            raise ConfigError(f"{path}: {name}: give exactly `positive: [...]` and `negative: [...]`")
        lists = [entry["positive"], entry["negative"]]
        if not all(isinstance(prompts, list) and prompts and all(isinstance(p, str) and p.strip() for p in prompts)
                   for prompts in lists):
            raise ConfigError(f"{path}: {name}: positive and negative must be non-empty lists of prompts")
        findings.append(Finding(name, tuple(lists[0]), tuple(lists[1])))
    return tuple(findings)

