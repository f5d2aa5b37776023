"""The IU X-ray (Open-I) report format: one XML file per study, read into a report-only hospital folder.

Demner-Fushman et al., 2016, "Preparing a collection of radiology examinations for distribution and
retrieval" (JAMIA). Each `ecgen-radiology/<n>.xml` holds `<AbstractText Label="FINDINGS|IMPRESSION|...">`
sections and `<parentImage id="CXR<n>_<k>_IM-...">` entries naming its images (not shipped with the
reports; `NLMCXR_png.tgz` holds them as `<id>.png`). A report is one patient's examination, so the patient
is the report's id (`CXR<n>`), and the split is drawn per patient: all images and the report of one
examination land in one split. With a folder of the images, `write_iu_dataset` pairs each report with its
examination's first image found there (a dataset folder, `dataset=folder`).
"""

import tarfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmm.data.hospital_folder import write_hospital_folder


@dataclass(frozen=True)
class IUReport:
    report_id: str  # CXR<n>: also the patient
    findings: str  # "" when the section is absent or empty
    impression: str
    image_ids: tuple[str, ...]  # CXR<n>_<k>_IM-...: the examination's images (files not included)

    @property
    def text(self) -> str:
        """The report as a hospital folder holds it: findings, then impression."""
        return " ".join(part for part in (f"FINDINGS: {self.findings}" if self.findings else "",
                                          f"IMPRESSION: {self.impression}" if self.impression else "") if part)


def parse_iu_report(xml: bytes | str, source: str = "<xml>") -> IUReport:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as error:
        raise ValueError(f"{source}: not IU X-ray report XML ({error})") from error
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise ValueError(f"{source}: no <uId id=...>; not an IU X-ray (Open-I) report")
    sections = {node.get("Label"): " ".join((node.text or "").split()) for node in root.iter("AbstractText")}
    images = tuple(node.get("id") for node in root.iter("parentImage") if node.get("id"))
    return IUReport(uid.get("id"), sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""), images)


def read_iu_reports(source: Path) -> list[IUReport]:
    """Every report in `source`: the NLMCXR_reports.tgz archive or a folder of XML files, sorted by id number."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such archive or folder of IU X-ray report XML files")
    reports = [parse_iu_report(data, name) for name, data in _xml_files(source)]
    return sorted(reports, key=lambda r: int(r.report_id.removeprefix("CXR")) if r.report_id[3:].isdigit() else 0)


def _xml_files(source: Path) -> Iterator[tuple[str, bytes]]:
    if source.is_dir():
        for path in sorted(source.rglob("*.xml")):
            yield str(path), path.read_bytes()
        return
    with tarfile.open(source) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith(".xml"):
                yield member.name, archive.extractfile(member).read()


def patient_splits(patients: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """train | test per patient, seeded; exactly round(test_fraction * patients) patients in test."""
    unique = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(unique))
    test = {unique[i] for i in order[:round(test_fraction * len(unique))]}
    return {patient: "test" if patient in test else "train" for patient in unique}


def write_iu_hospital(reports: list[IUReport], folder: Path, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """A report-only hospital folder from IU reports (those with findings or impression)."""
    usable = [r for r in reports if r.text]
    splits = patient_splits([r.report_id for r in usable], test_fraction, seed)
    ids = [r.report_id for r in usable]
    return write_hospital_folder(folder, ids, ids, [None] * len(usable), [r.text for r in usable],
                                 [splits[r.report_id] for r in usable])


def write_iu_dataset(reports: list[IUReport], folder: Path, images: Path, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[Path, int]:
    """A dataset folder pairing each report with the first of its images found under `images` (by file name,
    `<image id>.png`, anywhere below it); a report whose images are all absent stays report-only. The image
    files stay where they are. Returns the manifest and the number of paired studies."""
    from fedmm.data.importers import ManifestRow, relative_to, write_manifest

    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"--images {images}: no such folder (the IU X-ray PNGs, e.g. NLMCXR_png.tgz unpacked)")
    found = {path.stem: path for path in images.rglob("*.png")}
    usable = [r for r in reports if r.text]
    splits = patient_splits([r.report_id for r in usable], test_fraction, seed)
    rows = []
    for report in usable:
        image = next((found[i] for i in report.image_ids if i in found), None)
        rows.append(ManifestRow(report.report_id, report.report_id, relative_to(image, folder) if image else "",
                                report.text, "", splits[report.report_id]))
    return write_manifest(Path(folder), rows, (), with_site=False), sum(1 for row in rows if row.image)
