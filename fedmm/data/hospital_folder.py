"""One hospital's data on disk: a manifest (CSV, one row per study) and its image and report files.

    <folder>/manifest.csv
        study_id     unique in the folder
        patient_id   a patient's studies are all in one split
        image        path relative to the folder (PNG, JPEG or DICOM); empty: the study has no image
        report       the report text; or
        report_file  a text file relative to the folder; both empty: the study has no report
                     (either column alone is enough)
        split        train | test
        <finding>    optional label columns, one per name in `FINDING_NAMES`: 1, 0 or empty (unknown);
                     evaluation only
    <folder>/images/..., <folder>/reports/...   (any layout; the manifest names the files)

A study with only an image or only a report is how a missing modality looks on disk.
`validate_hospital_folder` reports every problem with its row (1 = the first study) and column;
`read_hospital_folder` runs it first and refuses a folder with problems.
"""

import csv
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmm.data.findings import FINDING_NAMES, FINDINGS
from fedmm.data.modality import AVAILABILITY_CODES, Availability

FOLDER_FINDINGS = FINDINGS  # the vocabulary of a folder's label columns (and their zero-shot prompts)
MANIFEST = "manifest.csv"
REQUIRED_COLUMNS = ("study_id", "patient_id", "image", "report", "report_file", "split")  # what writers write
REPORT_COLUMNS = ("report", "report_file")  # a manifest needs one of the two, not both
SPLITS = ("train", "test")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", *DICOM_SUFFIXES)


class HospitalFolderError(ValueError):
    """A hospital folder that cannot be read; the message lists every problem."""


@dataclass(frozen=True)
class Problem:
    row: int | None  # 1-based study row of the manifest (the header is row 0); None: the whole folder
    column: str | None
    message: str

    def __str__(self) -> str:
        where = "manifest" if self.row is None else f"row {self.row}"
        return f"{where}{f', column {self.column}' if self.column else ''}: {self.message}"


@dataclass(frozen=True)
class HospitalStudies:
    """What a hospital folder holds, in manifest order."""

    study_ids: tuple[str, ...]
    patient_ids: tuple[str, ...]
    images: list[np.ndarray | None]  # (H, W) uint8 grayscale, None where the study has no image
    reports: tuple[str | None, ...]
    availability: np.ndarray  # (n,) int8 codes of `Availability`
    split: np.ndarray  # (n,) str: train | test
    labels: np.ndarray  # (n, F) int8; -1 where unknown


def read_image(path: Path) -> np.ndarray:
    """(H, W) uint8 grayscale from a PNG, JPEG or DICOM file. DICOM: the stored pixels, MONOCHROME1
    inverted, linearly rescaled from their own range to 0..255."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        import pydicom

        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array.astype(np.float64)
        if pixels.ndim != 2:
            raise ValueError(f"expected a single-frame grayscale DICOM, got pixel shape {pixels.shape}")
        if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
            pixels = pixels.max() - pixels
        low, high = pixels.min(), pixels.max()
        return (
            np.zeros(pixels.shape, np.uint8)
            if high <= low
            else np.round(255 * (pixels - low) / (high - low)).astype(np.uint8)
        )
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def read_manifest(folder: Path) -> tuple[list[str], list[dict[str, str]]] | Problem:
    """(columns, rows) of the folder's manifest, a missing report column read as empty; or why it cannot be read."""
    path = folder / MANIFEST
    if not path.is_file():
        return Problem(
            None,
            None,
            f"{path} not found; a hospital folder needs a {MANIFEST} (see `fedmm data "
            "export-synthetic` for an example)",
        )
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns, rows = list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        return Problem(None, None, f"{path} is not a UTF-8 CSV file: {error}")
    for column in REPORT_COLUMNS:  # either report column alone is enough: the other reads as empty
        if column not in columns:
            for row in rows:
                row[column] = ""
    return columns, rows


ImageKeeper = Callable[[int, np.ndarray], None]  # (row, decoded pixels): what a reader keeps of each image


def label_columns(columns: list[str], labels: tuple[str, ...] | None,
                  optional: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The label columns of a manifest: `labels` (a fixed vocabulary), or every column that is neither
    required nor in `optional` (a dataset's own vocabulary, `labels=None`)."""
    if labels is not None:
        return labels
    return tuple(column for column in columns if column not in REQUIRED_COLUMNS and column not in optional)


def validate_hospital_folder(folder: Path, keep: ImageKeeper | None = None,
                             labels: tuple[str, ...] | None = FINDING_NAMES,
                             optional: tuple[str, ...] = (), decode_images: bool = True) -> list[Problem]:
    """Every problem of a hospital folder: missing file, unreadable image, empty report, unknown split,
    duplicate study id, patient in both splits, a study with neither modality, bad labels or columns.
    `keep`: when given, receives each readable image with its row, so a reader decodes every file once.
    `labels`: the label columns a manifest may have (None: every column beyond the required and `optional`).
    `decode_images=False`: image files are checked for type and presence only (a reader that decodes them
    later, in batches, names the unreadable ones then: `decode_image`)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if isinstance(manifest, Problem):
        return [manifest]
    columns, rows = manifest
    vocabulary = label_columns(columns, labels, optional)
    known = (*REQUIRED_COLUMNS, *optional, *vocabulary)
    missing = [column for column in REQUIRED_COLUMNS if column not in columns and column not in REPORT_COLUMNS]
    if not any(column in columns for column in REPORT_COLUMNS):
        missing.append("report")  # (or report_file)
    unknown = [column for column in columns if column not in known]
    problems = [Problem(None, column, "required column is missing") for column in missing]
    problems += [Problem(None, column, f"unknown column; valid: {list(known)}") for column in unknown]
    if missing:
        return problems
    first_row_of: dict[str, int] = {}
    splits_of_patient: dict[str, dict[str, int]] = defaultdict(dict)
    for number, row in enumerate(rows, start=1):
        problems += _row_problems(folder, number, row, first_row_of, keep, vocabulary, decode_images)
        if row["patient_id"].strip() and row["split"] in SPLITS:
            splits_of_patient[row["patient_id"].strip()].setdefault(row["split"], number)
    for patient, splits in splits_of_patient.items():
        if len(splits) > 1:
            problems.append(
                Problem(
                    splits["test"],
                    "patient_id",
                    f"patient {patient!r} is in both splits (train at "
                    f"row {splits['train']}); split by patient so no patient is in train and test",
                )
            )
    if not rows:
        problems.append(Problem(None, None, f"{folder / MANIFEST} lists no studies"))
    return sorted(problems, key=lambda p: (p.row or 0, p.column or ""))


def _row_problems(folder: Path, number: int, row: dict[str, str], first_row_of: dict[str, int],
                  keep: ImageKeeper | None, vocabulary: tuple[str, ...], decode_images: bool) -> list[Problem]:
    problems = []
    study = (row.get("study_id") or "").strip()
    if not study:
        problems.append(Problem(number, "study_id", "empty study id"))
    elif study in first_row_of:
        problems.append(
            Problem(number, "study_id", f"duplicate study id {study!r} (first at row {first_row_of[study]})")
        )
    else:
        first_row_of[study] = number
    if not (row.get("patient_id") or "").strip():
        problems.append(Problem(number, "patient_id", "empty patient id"))
    if row.get("split") not in SPLITS:
        problems.append(Problem(number, "split", f"unknown split {row.get('split')!r}; valid: {list(SPLITS)}"))
    image, report, report_file = (row.get(c) or "" for c in ("image", "report", "report_file"))
    if image.strip():
        checked = decode_image(folder, number, image.strip()) if decode_images else _image_file_problem(
            folder, number, image.strip())
        if isinstance(checked, Problem):
            problems.append(checked)
        elif checked is not None and keep is not None:
            keep(number, checked)
    if report.strip() and report_file.strip():
        problems.append(Problem(number, "report_file", "give the report text or a report file, not both"))
    elif report_file.strip():
        problems += _report_file_problems(folder, number, report_file.strip())
    elif report and not report.strip():
        problems.append(
            Problem(
                number, "report", "empty report (only whitespace); leave the cell empty for a study without a report"
            )
        )
    if not image.strip() and not report.strip() and not report_file.strip():
        problems.append(Problem(number, "image", "the study has neither an image nor a report"))
    for finding in vocabulary:
        if (row.get(finding) or "").strip() not in ("", "0", "1"):
            problems.append(Problem(number, finding, f"label {row[finding]!r} must be 1, 0 or empty"))
    return problems


def _image_file_problem(folder: Path, number: int, relative: str) -> Problem | None:
    path = folder / relative
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return Problem(number, "image", f"{relative}: unsupported image type; valid: {list(IMAGE_SUFFIXES)}")
    if not path.is_file():
        return Problem(number, "image", f"{relative}: file not found under {folder}")
    return None


def decode_image(folder: Path, number: int, relative: str) -> np.ndarray | Problem:
    """The (H, W) uint8 pixels of row `number`'s image file, or the problem that names why it cannot be used."""
    problem = _image_file_problem(folder, number, relative)
    if problem is not None:
        return problem
    try:
        pixels = read_image(folder / relative)
    except Exception as error:  # PIL, pydicom: any failure to decode is the same problem to the user
        return Problem(number, "image", f"{relative}: unreadable image ({type(error).__name__}: {error})")
    if min(pixels.shape) < 8:
        return Problem(number, "image", f"{relative}: image of {pixels.shape} px is too small (at least 8x8)")
    return pixels


def _report_file_problems(folder: Path, number: int, relative: str) -> list[Problem]:
    path = folder / relative
    if not path.is_file():
        return [Problem(number, "report_file", f"{relative}: file not found under {folder}")]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        return [Problem(number, "report_file", f"{relative}: not UTF-8 text ({error})")]
    return [] if text.strip() else [Problem(number, "report_file", f"{relative}: empty report")]


def read_hospital_folder(folder: Path) -> HospitalStudies:
    """The folder's studies, after `validate_hospital_folder` found no problem (else HospitalFolderError)."""
    folder = Path(folder)
    decoded: dict[int, np.ndarray] = {}
    problems = validate_hospital_folder(folder, decoded.__setitem__)
    if problems:
        raise_problems(folder, problems)
    columns, rows = read_manifest(folder)
    images = [decoded.get(number) for number in range(1, len(rows) + 1)]  # decoded once, while validating
    reports = tuple(
        row["report"].strip()
        if row["report"].strip()
        else (folder / row["report_file"].strip()).read_text(encoding="utf-8").strip()
        if row["report_file"].strip()
        else None
        for row in rows
    )
    index = index_hospital_folder(folder)
    return HospitalStudies(
        tuple(row["study_id"].strip() for row in rows),
        tuple(row["patient_id"].strip() for row in rows),
        images,
        reports,
        index.availability,
        index.split,
        index.labels,
    )


def raise_problems(folder: Path, problems: list[Problem]) -> None:
    """Raise HospitalFolderError naming the folder and (the first 50 of) `problems`, with the command that
    lists them all."""
    listed = "\n  ".join(str(p) for p in problems[:50])
    more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
    raise HospitalFolderError(
        f"{folder}: {len(problems)} problem(s); run `fedmm data validate {folder}`:\n  {listed}{more}"
    )


def write_hospital_folder(
    folder: Path,
    study_ids: list[str],
    patient_ids: list[str],
    images: list[np.ndarray | None],
    reports: list[str | None],
    splits: list[str],
    labels: np.ndarray | None = None,
) -> Path:
    """Write studies as a hospital folder (PNG images under images/, report text in the manifest)."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / MANIFEST, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*REQUIRED_COLUMNS, *(FINDING_NAMES if labels is not None else ())])
        for index, (study, patient, image, report, split) in enumerate(
            zip(study_ids, patient_ids, images, reports, splits)
        ):
            relative = ""
            if image is not None:
                relative = f"images/{study}.png"
                Image.fromarray(image).save(folder / relative)
            label_cells = [int(v) for v in labels[index]] if labels is not None else []
            writer.writerow([study, patient, relative, report or "", "", split, *label_cells])
    return folder


@dataclass(frozen=True)
class FolderIndex:
    """What the manifest alone says about a folder's studies, with no file decoded."""

    availability: np.ndarray  # (n,) int8 codes of `Availability`
    split: np.ndarray  # (n,) str: train | test
    labels: np.ndarray  # (n, F) int8; -1 where unknown


def index_hospital_folder(folder: Path, labels: tuple[str, ...] | None = FINDING_NAMES,
                          optional: tuple[str, ...] = ()) -> FolderIndex:
    """Availability, split and labels of every study, from the manifest cells. A manifest that cannot be
    read raises HospitalFolderError with every problem of the folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if isinstance(manifest, Problem) or any(column not in manifest[0] for column in REQUIRED_COLUMNS
                                            if column not in REPORT_COLUMNS) or not any(
                                                column in manifest[0] for column in REPORT_COLUMNS):
        raise_problems(folder, validate_hospital_folder(folder, labels=labels, optional=optional))
    columns, rows = manifest
    vocabulary = label_columns(columns, labels, optional)
    has_image = [bool(row["image"].strip()) for row in rows]
    has_report = [bool(row["report"].strip() or row["report_file"].strip()) for row in rows]
    availability = np.array(
        [
            AVAILABILITY_CODES[
                Availability.PAIRED
                if image and report
                else Availability.IMAGE_ONLY
                if image
                else Availability.REPORT_ONLY
            ]
            for image, report in zip(has_image, has_report)
        ],
        dtype=np.int8,
    )
    values = np.array([[_label(row.get(f)) for f in vocabulary] for row in rows], dtype=np.int8).reshape(
        len(rows), len(vocabulary)
    )
    return FolderIndex(availability, np.array([row["split"] for row in rows]), values)


def _label(cell: str | None) -> int:
    return int(cell) if cell is not None and cell.strip() else -1


def file_state(path: Path) -> str:
    """What stands for a file's content without reading it: its size and modification time (as `make` does)."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"

