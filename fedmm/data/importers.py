"""Importers that write a dataset folder's manifest (`dataset=folder`, `folder_dataset.py`) for data in its
published layout. Files stay where they are: the manifest names them by paths relative to the output folder.

- MIMIC-CXR-JPG (Johnson et al., 2019, "MIMIC-CXR-JPG, a large publicly available database of labeled chest
  radiographs", arXiv:1901.07042): `files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`,
  `mimic-cxr-2.0.0-metadata.csv` (view positions), `mimic-cxr-2.0.0-chexpert.csv` (14 CheXpert labels:
  1 positive, 0 negative, -1 uncertain, empty not mentioned), optionally `mimic-cxr-2.0.0-split.csv`, and the
  reports `files/pNN/pNNNNNNNN/sNNNNNNNN.txt` (from mimic-cxr-reports, here or under `--reports`).
- a generic CSV with one row per study, its columns named on the command line.

Every problem in a source names its file, row and column.
"""

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedmm.data.folder_dataset import SITE_COLUMN
from fedmm.data.hospital_folder import MANIFEST, REQUIRED_COLUMNS


class SourceError(ValueError):
    """A source that cannot be imported; the message names the file, row and column."""


@dataclass
class ManifestRow:
    study_id: str
    patient_id: str
    image: str = ""  # path relative to the output folder, or ""
    report: str = ""
    report_file: str = ""  # path relative to the output folder, or ""
    split: str = "train"
    site: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # label -> "1" | "0" | "" (unknown)


def write_manifest(out: Path, rows: Sequence[ManifestRow], label_names: Sequence[str], with_site: bool) -> Path:
    """`out/manifest.csv` for `rows`; `out` is created."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / MANIFEST, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*REQUIRED_COLUMNS, *([SITE_COLUMN] if with_site else []), *label_names])
        for row in rows:
            writer.writerow([row.study_id, row.patient_id, row.image, row.report, row.report_file, row.split,
                             *([row.site] if with_site else []), *(row.labels.get(n, "") for n in label_names)])
    return out / MANIFEST


def relative_to(path: Path, out: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(out).resolve())


def patient_split(patient: str, test_fraction: float, seed: int) -> str:
    """train | test for a patient, from a seeded hash of its id: stable whatever else is imported."""
    digest = np.random.default_rng([seed, *map(ord, patient)]).random()
    return "test" if digest < test_fraction else "train"


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise SourceError(f"{path}: not a UTF-8 CSV file ({error})") from error


def need_columns(path: Path, columns: list[str], wanted: Sequence[str]) -> None:
    missing = [column for column in wanted if column not in columns]
    if missing:
        raise SourceError(f"{path}: column(s) {missing} not found; the columns are {columns}")


# --- MIMIC-CXR-JPG -------------------------------------------------------------------------------------------

MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
CHEXPERT_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
                   "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
                   "Pneumonia", "Pneumothorax", "Support Devices")
FRONTAL = ("PA", "AP")


def chexpert_cell(value: str, path: Path, row: int, column: str) -> str:
    """CheXpert's 1.0 / 0.0 / -1.0 (uncertain: unknown) / empty (not mentioned: negative) -> 1 / 0 / ""."""
    value = value.strip()
    if value == "":
        return "0"
    try:
        number = float(value)
    except ValueError as error:
        raise SourceError(f"{path}: row {row}, column {column}: {value!r} is not 1, 0, -1 or empty") from error
    if number not in (1.0, 0.0, -1.0):
        raise SourceError(f"{path}: row {row}, column {column}: {value!r} is not 1, 0, -1 or empty")
    return {1.0: "1", 0.0: "0", -1.0: ""}[number]


def import_mimic_cxr(root: Path, out: Path, views: Sequence[str] = FRONTAL, reports: Path | None = None,
                     test_fraction: float = 0.2, seed: int = 0) -> Path:
    """A dataset folder for MIMIC-CXR-JPG under `root`: one row per study, its first image of `views` (PA
    before AP), its report, its CheXpert labels; the official split when `mimic-cxr-2.0.0-split.csv` is there
    (validate counts as train), else by patient. Studies without such an image keep their report only."""
    root, out = Path(root), Path(out)
    reports = Path(reports) if reports is not None else root
    columns, metadata = read_csv(root / MIMIC_METADATA)
    need_columns(root / MIMIC_METADATA, columns, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    columns, chexpert = read_csv(root / MIMIC_CHEXPERT)
    need_columns(root / MIMIC_CHEXPERT, columns, ("subject_id", "study_id", *CHEXPERT_LABELS))
    official: dict[str, str] = {}
    if (root / MIMIC_SPLIT).is_file():
        columns, split_rows = read_csv(root / MIMIC_SPLIT)
        need_columns(root / MIMIC_SPLIT, columns, ("study_id", "split"))
        official = {row["study_id"]: "test" if row["split"] == "test" else "train" for row in split_rows}
    images: dict[str, list[tuple[int, str, str]]] = {}  # study -> (view rank, dicom id, subject)
    for row in metadata:
        if row["ViewPosition"] in views:
            images.setdefault(row["study_id"], []).append((views.index(row["ViewPosition"]), row["dicom_id"],
                                                           row["subject_id"]))
    rows = []
    for number, row in enumerate(chexpert, start=1):
        subject, study = row["subject_id"].strip(), row["study_id"].strip()
        if not subject.isdigit() or not study.isdigit():
            raise SourceError(f"{root / MIMIC_CHEXPERT}: row {number}: subject_id {subject!r} and study_id "
                               f"{study!r} must be numbers")
        folder = Path("files") / f"p{subject[:2]}" / f"p{subject}"
        image = ""
        if study in images:
            _, dicom, _ = sorted(images[study])[0]
            path = root / folder / f"s{study}" / f"{dicom}.jpg"
            if not path.is_file():
                raise SourceError(f"{root / MIMIC_METADATA}: dicom_id {dicom} (study {study}): {path} not found")
            image = relative_to(path, out)
        report = reports / folder / f"s{study}.txt"
        report_file = relative_to(report, out) if report.is_file() else ""
        if not image and not report_file:
            continue  # neither a chosen view nor a report: nothing to import
        labels = {name: chexpert_cell(row[name], root / MIMIC_CHEXPERT, number, name) for name in CHEXPERT_LABELS}
        rows.append(ManifestRow(f"s{study}", f"p{subject}", image, "", report_file,
                                official.get(study) or patient_split(subject, test_fraction, seed), "", labels))
    if not rows:
        raise SourceError(f"{root}: no study with a {'/'.join(views)} image or a report was found")
    return write_manifest(out, rows, CHEXPERT_LABELS, with_site=False)


# --- a generic CSV -------------------------------------------------------------------------------------------

def import_csv(source: Path, out: Path, image_col: str | None, report_col: str | None, patient_col: str,
               site_col: str | None = None, label_cols: Sequence[str] = (), split_col: str | None = None,
               study_col: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """A dataset folder from a CSV with one row per study. Image cells are paths relative to the CSV's folder
    (or absolute); the report column holds text, or a path to a .txt file. Labels: 1/0/empty (also 1.0, -1 as
    unknown, true/false)."""
    source, out = Path(source), Path(out)
    columns, rows = read_csv(source)
    named = [c for c in (image_col, report_col, patient_col, site_col, split_col, study_col, *label_cols) if c]
    need_columns(source, columns, named)
    if not image_col and not report_col:
        raise SourceError("give --image-col, --report-col or both: a study needs an image or a report")
    written = []
    for number, row in enumerate(rows, start=1):
        where = f"{source}: row {number}"
        patient = row[patient_col].strip()
        if not patient:
            raise SourceError(f"{where}, column {patient_col}: empty patient id")
        image = ""
        if image_col and row[image_col].strip():
            path = Path(row[image_col].strip())
            path = path if path.is_absolute() else source.parent / path
            if not path.is_file():
                raise SourceError(f"{where}, column {image_col}: {path} not found")
            image = relative_to(path, out)
        report, report_file = "", ""
        if report_col and row[report_col].strip():
            cell = row[report_col].strip()
            candidate = Path(cell) if Path(cell).is_absolute() else source.parent / cell
            if cell.endswith(".txt") and candidate.is_file():
                report_file = relative_to(candidate, out)
            else:
                report = cell
        if not image and not report and not report_file:
            raise SourceError(f"{where}: neither an image nor a report")
        split = row[split_col].strip().lower() if split_col else patient_split(patient, test_fraction, seed)
        if split in ("val", "valid", "validate", "validation"):
            split = "train"
        if split not in ("train", "test"):
            raise SourceError(f"{where}, column {split_col}: split {split!r}; valid: train, test (val counts as train)")
        labels = {name: label_cell(row[name], f"{where}, column {name}") for name in label_cols}
        study = row[study_col].strip() if study_col else f"study-{number}"
        written.append(ManifestRow(study, patient, image, report, report_file, split,
                                   row[site_col].strip() if site_col else "", labels))
    return write_manifest(out, written, list(label_cols), with_site=site_col is not None)


def label_cell(value: str, where: str) -> str:
    value = value.strip().lower()
    mapping = {"": "", "1": "1", "1.0": "1", "true": "1", "yes": "1", "0": "0", "0.0": "0", "false": "0", "no": "0",
               "-1": "", "-1.0": ""}
    if value not in mapping:
        raise SourceError(f"{where}: label {value!r}; use 1, 0 or empty (-1: unknown)")
    return mapping[value]
