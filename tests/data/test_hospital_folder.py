"""Hospital folders on disk: a good folder validates and reads; each kind of problem is reported with its
row and column; DICOM images load; the synthetic federation exports as valid folders; IU X-ray reports."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedmm.cli import main as cli_main
from fedmm.data.hospital_folder import (
    MANIFEST,
    HospitalFolderError,
    read_hospital_folder,
    read_image,
    validate_hospital_folder,
    write_hospital_folder,
)
from fedmm.data.modality import AVAILABILITY_CODES, Availability

IU_REPORTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "iu-xray-reports" / "NLMCXR_reports.tgz"


def image(value: int = 100) -> np.ndarray:
    return np.full((16, 16), value, dtype=np.uint8)


@pytest.fixture
def good_folder(tmp_path) -> Path:
    """Three patients: a paired study, an image-only one and a report-only one (both in test)."""
    return write_hospital_folder(tmp_path / "h", ["a", "b", "c", "d"], ["p1", "p1", "p2", "p3"],
                                 [image(), image(50), None, image(200)], ["normal", None, "effusion", "clear"],
                                 ["train", "train", "test", "test"])


def edit_manifest(folder: Path, row: int, **changes) -> None:
    path = folder / MANIFEST
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, list(reader)
    rows[row - 1].update(changes)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_good_folder_validates_and_reads(good_folder):
    assert validate_hospital_folder(good_folder) == []
    studies = read_hospital_folder(good_folder)
    codes = {a: AVAILABILITY_CODES[a] for a in Availability}
    assert studies.availability.tolist() == [codes[Availability.PAIRED], codes[Availability.IMAGE_ONLY],
                                             codes[Availability.REPORT_ONLY], codes[Availability.PAIRED]]
    assert studies.reports == ("normal", None, "effusion", "clear") and studies.images[2] is None
    assert np.array_equal(studies.images[1], image(50)) and studies.split.tolist() == ["train", "train", "test", "test"]


@pytest.mark.parametrize("row, changes, column, message", [
    (1, {"image": "images/nope.png"}, "image", "images/nope.png: file not found"),
    (1, {"report": "   "}, "report", "empty report"),
    (2, {"split": "validation"}, "split", "unknown split 'validation'"),
    (2, {"study_id": "a"}, "study_id", "duplicate study id 'a' (first at row 1)"),
    (4, {"patient_id": "p1"}, "patient_id", "patient 'p1' is in both splits"),
    (2, {"image": ""}, "image", "neither an image nor a report"),
    (3, {"report": "", "report_file": "reports/c.txt"}, "report_file", "reports/c.txt: file not found"),
    (1, {"image": "images/a.gif"}, "image", "unsupported image type"),
])
def test_each_problem_is_named_with_its_row_and_column(good_folder, row, changes, column, message):
    edit_manifest(good_folder, row, **changes)
    problems = validate_hospital_folder(good_folder)
    assert [(p.row, p.column) for p in problems] == [(row, column)], problems
    assert message in problems[0].message
    with pytest.raises(HospitalFolderError, match=f"row {row}, column {column}"):
        read_hospital_folder(good_folder)


def test_unreadable_image_and_empty_report_file(good_folder):
    (good_folder / "images" / "a.png").write_bytes(b"not a png")
    (good_folder / "reports").mkdir()
    (good_folder / "reports" / "c.txt").write_text("  \n")
    edit_manifest(good_folder, 3, report="", report_file="reports/c.txt")
    problems = validate_hospital_folder(good_folder)
    assert [(p.row, p.column) for p in problems] == [(1, "image"), (3, "report_file")]
    assert "unreadable image" in problems[0].message and "empty report" in problems[1].message


def test_missing_manifest_and_missing_column(tmp_path, good_folder):
    assert "manifest.csv not found" in str(validate_hospital_folder(tmp_path / "empty")[0])
    path = good_folder / MANIFEST
    path.write_text(path.read_text().replace("split", "fold", 1))
    problems = {p.column: p.message for p in validate_hospital_folder(good_folder)}
    assert problems.keys() == {"fold", "split"} and problems["split"] == "required column is missing"
    assert problems["fold"].startswith("unknown column; valid: ['study_id', 'patient_id',")


def test_dicom_written_with_pydicom_loads(tmp_path, good_folder):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = (np.arange(12 * 10).reshape(12, 10) * 30).astype(np.uint16)  # 0 .. 3570, 12-bit range
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicom = Dataset()
    dicom.file_meta = meta
    dicom.SOPClassUID, dicom.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dicom.Rows, dicom.Columns, dicom.SamplesPerPixel = 12, 10, 1
    dicom.PhotometricInterpretation = "MONOCHROME1"  # 0 is white: must come out inverted
    dicom.BitsAllocated, dicom.BitsStored, dicom.HighBit, dicom.PixelRepresentation = 16, 12, 11, 0
    dicom.PixelData = pixels.tobytes()
    path = tmp_path / "study.dcm"
    dicom.save_as(path, enforce_file_format=True)

    loaded = read_image(path)
    expected = np.round(255 * (pixels.max() - pixels.astype(float)) / pixels.max()).astype(np.uint8)
    assert loaded.shape == (12, 10) and np.array_equal(loaded, expected)
    shutil.copy(path, good_folder / "images" / "a.dcm")
    edit_manifest(good_folder, 1, image="images/a.dcm")
    assert validate_hospital_folder(good_folder) == []
    assert np.array_equal(read_hospital_folder(good_folder).images[0], expected)


def test_export_synthetic_writes_what_each_hospital_holds(smoke_overrides, tmp_path):
    from fedmm.compose import compose_config
    from fedmm.federation import load_federated_data

    out = tmp_path / "export"
    assert cli_main(["data", "export-synthetic", "--out", str(out), *smoke_overrides]) == 0
    assert cli_main(["data", "validate", *map(str, sorted(out.iterdir()))]) == 0
    data = load_federated_data(compose_config(smoke_overrides))
    for hospital in data.federation.hospitals:
        studies = read_hospital_folder(out / f"hospital-{hospital.hospital_id}")
        assert studies.availability.tolist() == [*hospital.train_availability, *hospital.test_availability]
        assert (studies.split == "train").sum() == len(hospital.train_indices)
    assert len(read_hospital_folder(out / "server-test").study_ids) == len(data.federation.global_test_indices)
    edit_manifest(out / "hospital-0", 1, split="dev")
    assert cli_main(["data", "validate", str(out / "hospital-0")]) == 1


@pytest.mark.skipif(not IU_REPORTS.is_file(), reason=f"IU X-ray reports not found at {IU_REPORTS} "
                                                      "(../shared/data/iu-xray-reports/ is outside the repository)")
def test_iu_xray_reports_load_and_split_by_patient(tmp_path):
    from fedmm.data.iu_xray import read_iu_reports, write_iu_hospital

    reports = read_iu_reports(IU_REPORTS)
    assert len(reports) == 3955 and sum(1 for r in reports if r.image_ids) == 3851
    assert sum(1 for r in reports if not r.findings and not r.impression) == 28
    first = reports[0]
    assert first.report_id == "CXR1" and first.image_ids == ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001")
    assert first.findings.startswith("The cardiac silhouette") and first.impression == "Normal chest x-XXXX."
    assert all(image.startswith(r.report_id + "_") for r in reports for image in r.image_ids)  # images of its exam
    folder = write_iu_hospital(reports, tmp_path / "iu", test_fraction=0.2, seed=0)
    assert validate_hospital_folder(folder) == []  # which includes: no patient in both splits
    studies = read_hospital_folder(folder)
    assert len(studies.study_ids) == 3927 and (studies.split == "test").sum() == round(0.2 * 3927)
    assert studies.reports[0] == f"FINDINGS: {first.findings} IMPRESSION: {first.impression}"


def test_iu_parser_names_a_file_that_is_not_iu_xml():
    from fedmm.data.iu_xray import parse_iu_report

    with pytest.raises(ValueError, match="bad.xml: no <uId"):
        parse_iu_report("<eCitation></eCitation>", "bad.xml")
