"""Importers write a dataset folder that `fedmm data validate --dataset` accepts and `dataset=folder` reads,
from tiny trees in each source's published layout, written here."""

import csv

import numpy as np
import pytest
from PIL import Image

from fedmm.cli import main
from fedmm.compose import compose_config
from fedmm.data.folder_dataset import load_folder_dataset
from fedmm.data.importers import CHEXPERT_LABELS, SourceError, import_csv, import_mimic_cxr
from fedmm.data.modality import AVAILABILITY_CODES, Availability


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def jpeg(path, shape=(60, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 255, shape, dtype=np.uint8)).save(path)


@pytest.fixture
def mimic_tree(tmp_path):
    """Three patients, four studies: a PA+lateral study, an AP-only one, a lateral-only one (report only) and
    one whose report is missing; CheXpert cells 1.0, 0.0, -1.0 and empty; the official split file."""
    root = tmp_path / "mimic-cxr-jpg"
    studies = [("10000032", "50414267", [("d1", "PA"), ("d2", "LATERAL")]),
               ("10000032", "53189527", [("d3", "AP")]),
               ("10000764", "57375967", [("d4", "LATERAL")]),
               ("10000898", "50771383", [("d5", "PA")])]
    metadata = []
    for subject, study, images in studies:
        for dicom, view in images:
            jpeg(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
            metadata.append([dicom, subject, study, "CHEST (PA AND LAT)", view, 60, 48])
        if study != "50771383":
            report = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
            report.write_text(f"FINDINGS: study {study}. IMPRESSION: no acute process.")
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id",
              "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns"], metadata)
    cells = {"50414267": ["1.0", "0.0"], "53189527": ["-1.0", ""], "57375967": ["", "1.0"], "50771383": ["0.0", ""]}
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_LABELS],
              [[subject, study, *cells[study], *[""] * (len(CHEXPERT_LABELS) - 2)] for subject, study, _ in studies])
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
              [["d1", "50414267", "10000032", "train"], ["d3", "53189527", "10000032", "validate"],
               ["d4", "57375967", "10000764", "test"], ["d5", "50771383", "10000898", "train"]])
    return root


def test_mimic_import_is_read_as_the_source_says(mimic_tree, tmp_path, capsys):
    out = tmp_path / "mimic-dataset"
    assert main(["data", "import-mimic", str(mimic_tree), "--out", str(out)]) == 0
    assert main(["data", "validate", "--dataset", str(out)]) == 0 and "ok" in capsys.readouterr().out
    dataset = load_folder_dataset(compose_config(["dataset=folder", f"dataset.path={out}"]).dataset)
    assert dataset.patients == ("p10000032", "p10000032", "p10000764", "p10000898")
    assert tuple(dataset.splits) == ("train", "train", "test", "train")  # the official split; validate -> train
    codes = {AVAILABILITY_CODES[a]: a for a in Availability}
    assert [codes[c] for c in dataset.availability] == [Availability.PAIRED, Availability.PAIRED,
                                                        Availability.REPORT_ONLY, Availability.IMAGE_ONLY]
    names = [finding.name for finding in dataset.findings]
    assert names == list(CHEXPERT_LABELS)
    first_two = dataset.labels[:, :2].tolist()
    assert first_two == [[1, 0], [-1, 0], [0, 1], [0, 0]]  # -1.0 (uncertain) is unknown; empty is negative
    assert dataset.images[0].shape == (224, 224)  # decoded, fitted


def test_a_bad_chexpert_cell_is_named(mimic_tree, tmp_path):
    path = mimic_tree / "mimic-cxr-2.0.0-chexpert.csv"
    path.write_text(path.read_text().replace("-1.0", "maybe"))
    with pytest.raises(SourceError, match=r"mimic-cxr-2.0.0-chexpert.csv: row 2, column Atelectasis: 'maybe'"):
        import_mimic_cxr(mimic_tree, tmp_path / "out")


def test_generic_csv_import_with_sites_labels_and_report_files(tmp_path, capsys):
    source = tmp_path / "export"
    jpeg(source / "img" / "a.png")
    jpeg(source / "img" / "b.jpg", (40, 90))
    (source / "txt").mkdir()
    (source / "txt" / "c.txt").write_text("Small left effusion.")
    write_csv(source / "studies.csv", ["pid", "file", "text", "hospital", "effusion", "fold"],
              [["1", "img/a.png", "Clear lungs.", "north", "0", "train"],
               ["2", "img/b.jpg", "", "south", "1.0", "val"],
               ["3", "", "txt/c.txt", "south", "-1", "test"]])
    out = tmp_path / "dataset"
    assert main(["data", "import-csv", str(source / "studies.csv"), "--out", str(out), "--patient-col", "pid",
                 "--image-col", "file", "--report-col", "text", "--site-col", "hospital", "--label-cols", "effusion",
                 "--split-col", "fold"]) == 0
    assert main(["data", "validate", "--dataset", str(out)]) == 0 and "ok" in capsys.readouterr().out
    dataset = load_folder_dataset(compose_config(["dataset=folder", f"dataset.path={out}"]).dataset)
    assert dataset.sites == ("north", "south", "south") and tuple(dataset.splits) == ("train", "train", "test")
    assert dataset.labels[:, 0].tolist() == [0, 1, -1] and dataset.reports[2] == "Small left effusion."
    bad = tmp_path / "bad.csv"
    write_csv(bad, ["pid", "file"], [["1", "img/missing.png"]])
    with pytest.raises(SourceError, match=r"bad.csv: row 1, column file: .*missing.png not found"):
        import_csv(bad, tmp_path / "x", "file", None, "pid")


IU_XML = """<eCitation><uId id="{id}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="FINDINGS">{findings}</AbstractText><AbstractText Label="IMPRESSION">Normal.</AbstractText>
</Abstract></Article></MedlineCitation>{images}</eCitation>"""


def test_iu_import_pairs_reports_with_their_images(tmp_path, capsys):
    xml = tmp_path / "ecgen-radiology"
    xml.mkdir()
    for n, images in ((1, ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]), (2, ["CXR2_1_IM-0652-1001"]), (3, [])):
        tags = "".join(f'<parentImage id="{image}"/>' for image in images)
        (xml / f"{n}.xml").write_text(IU_XML.format(id=f"CXR{n}", findings=f"Exam {n}.", images=tags))
    jpeg(tmp_path / "png" / "CXR1_1_IM-0001-4001.png")  # the first listed image is absent: the second is taken
    out = tmp_path / "iu"
    assert main(["data", "import-iu", str(xml), "--out", str(out), "--images", str(tmp_path / "png")]) == 0
    assert "1 studies paired with an image, 2 report-only" in " ".join(capsys.readouterr().out.split())
    assert main(["data", "validate", "--dataset", str(out)]) == 0
    dataset = load_folder_dataset(compose_config(["dataset=folder", f"dataset.path={out}"]).dataset)
    assert dataset.patients == ("CXR1", "CXR2", "CXR3") and dataset.findings == ()  # no label columns
    assert dataset.availability[0] == AVAILABILITY_CODES[Availability.PAIRED]
    assert dataset.reports[0] == "FINDINGS: Exam 1. IMPRESSION: Normal."


def test_a_manifest_with_only_report_files_or_only_report_text_is_enough(tmp_path):
    from fedmm.data.hospital_folder import validate_hospital_folder

    jpeg(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "r.txt").write_text("Clear.")
    write_csv(tmp_path / "a" / "manifest.csv", ["study_id", "patient_id", "image", "report_file", "split"],
              [["s1", "p1", "x.png", "r.txt", "train"], ["s2", "p2", "", "r.txt", "test"]])
    assert validate_hospital_folder(tmp_path / "a", labels=None) == []
    dataset = load_folder_dataset(compose_config(["dataset=folder", f"dataset.path={tmp_path / 'a'}"]).dataset)
    assert dataset.reports == ("Clear.", "Clear.")
    write_csv(tmp_path / "b" / "manifest.csv", ["study_id", "patient_id", "image", "split"],
              [["s1", "p1", "", "train"]])
    problems = [str(p) for p in validate_hospital_folder(tmp_path / "b", labels=None)]
    assert problems == ["manifest, column report: required column is missing"]
