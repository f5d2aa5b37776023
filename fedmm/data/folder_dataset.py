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
every hospital. Images (PNG, JPEG, DICOM, any size and aspect) are fitted to `dataset.image_size` keeping
their aspect (padded with black). They are decoded only to extract their features, a batch at a time, and
never twice: features are cached per study (`models/features.py`), so a manifest of 100,000 rows is never
held in memory as pixels and an edited one recomputes only the studies whose files changed.
"""

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from fedmm.config import ConfigError, DatasetConfig
from fedmm.data.dataset import MultimodalDataset
from fedmm.data.findings import Finding
from fedmm.data.hospital_folder import (
    MANIFEST,
    Problem,
    decode_image,
    file_state,
    index_hospital_folder,
    label_columns,
    raise_problems,
    read_manifest,
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
    """`dataset=folder`: the folder's studies, with the prompts of `dataset.prompts` (or its prompts.yaml)."""
    check_folder_dataset(cfg)
    dataset = read_folder(Path(cfg.path), cfg.image_size, cfg.labels, prompts_path(cfg))
    if cfg.num_samples is not None and cfg.num_samples != len(dataset):
        raise ConfigError(f"dataset.num_samples={cfg.num_samples}, but {Path(cfg.path) / MANIFEST} lists "
                          f"{len(dataset)} studies; set dataset.num_samples=null to use them all")
    return dataset


def read_folder(folder: Path, image_size: int, labels: tuple[str, ...] | None, prompts: Path | None,
                known: tuple[Finding, ...] = ()) -> MultimodalDataset:
    """A folder's studies, every cell and file checked first (all problems named at once) except the
    decoding of images, which is checked as they are read. `labels`: the label columns (None: every column
    beyond the known ones); their prompts come from the `prompts` file, else from the `known` finding of the
    same name, else are generic."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    header = [] if isinstance(manifest, Problem) else manifest[0]
    optional = (SITE_COLUMN,) if SITE_COLUMN in header else ()
    problems = validate_hospital_folder(folder, labels=labels, optional=optional, decode_images=False)
    if problems:
        raise_problems(folder, problems)
    index = index_hospital_folder(folder, labels=labels, optional=optional)
    columns, rows = manifest
    vocabulary = label_columns(columns, labels, optional)
    images = FolderImages(folder, image_size, tuple(row["image"].strip() for row in rows))
    reports = tuple(_report_text(folder, row) for row in rows)
    # The content: the manifest's cells, what stands for each image file, each report's text.
    digest = hashlib.sha256(f"folder:v2:{vocabulary}".encode() + (folder / MANIFEST).read_bytes())
    digest.update("\0".join(key or "" for key in images.study_keys).encode())
    digest.update("\0".join(reports).encode())
    return MultimodalDataset(
        name=f"folder:{folder.resolve().name}",
        fingerprint=digest.hexdigest()[:20],
        images=images,
        reports=reports,
        labels=index.labels,
        findings=read_prompts(prompts, vocabulary, known),
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
    """The images of a folder's studies, decoded only when read and a batch at a time. `study_keys` stands
    for each image's content without reading it (its path, size and modification time, and the fitted size),
    so features can be cached per study; None where a study has no image."""

    def __init__(self, folder: Path, size: int, files: tuple[str, ...]) -> None:
        self.folder, self.size, self.files = Path(folder), size, files  # files: relative paths, "" for none
        self._keys: tuple[str | None, ...] | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def study_keys(self) -> tuple[str | None, ...]:
        if self._keys is None:
            self._keys = tuple(self._key(relative) if relative else None for relative in self.files)
        return self._keys

    def _key(self, relative: str) -> str:
        path = (self.folder / relative).resolve()
        spec = f"fedmm-image:v1:{path}:{file_state(path)}:{self.size}:pad"
        return hashlib.sha256(spec.encode()).hexdigest()[:32]

    def read(self, rows: Sequence[int]) -> tuple[np.ndarray, list[int], list[Problem]]:
        """(pixels, read, problems): the fitted (k, S, S) uint8 images of the `rows` (0-based) whose file
        decodes, those rows, and a problem naming the manifest row of each that does not."""
        pixels, read, problems = [], [], []
        for row in rows:
            decoded = decode_image(self.folder, row + 1, self.files[row])
            if isinstance(decoded, Problem):
                problems.append(decoded)
            else:
                pixels.append(fit_square(decoded, self.size))
                read.append(row)
        stacked = np.stack(pixels) if pixels else np.zeros((0, self.size, self.size), np.uint8)
        return stacked, read, problems

    def raise_problems(self, problems: list[Problem]) -> None:
        raise_problems(self.folder, problems)

    def __getitem__(self, item: int | slice) -> np.ndarray:
        """Pixels by position, as an array would give them: black where a study has no image."""
        rows = range(len(self))[item]
        single = isinstance(rows, int)
        rows = [rows] if single else list(rows)
        out = np.zeros((len(rows), self.size, self.size), np.uint8)
        present = [position for position, row in enumerate(rows) if self.files[row]]
        pixels, read, problems = self.read([rows[position] for position in present])
        if problems:
            self.raise_problems(problems)
        out[present] = pixels
        return out[0] if single else out


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side is `size` (aspect kept), then pad the shorter one with black, centred."""
    from PIL import Image, ImageOps

    return np.asarray(ImageOps.pad(Image.fromarray(image), (size, size), Image.Resampling.BILINEAR, color=0))


def prompts_path(cfg: DatasetConfig) -> Path | None:
    if cfg.prompts is not None:
        return Path(cfg.prompts)
    default = Path(cfg.path) / PROMPTS_FILE
    return default if default.is_file() else None


def read_prompts(path: Path | None, vocabulary: tuple[str, ...],
                 known: tuple[Finding, ...] = ()) -> tuple[Finding, ...]:
    """One `Finding` per label column: its prompts from the YAML file, else those of the `known` finding of
    that name, else generic ones."""
    known_by_name = {finding.name: finding for finding in known}
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
        if entry is None and name in known_by_name:
            findings.append(known_by_name[name])
            continue
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

