"""The built-in dataset: deterministic, cached, and its reports never contradict its images."""

import re

import numpy as np
import pytest

from fedmm.data import synthetic
from fedmm.data.findings import FINDING_INDEX
from fedmm.data.synthetic import generate_synthetic_cxr, load_synthetic_cxr


@pytest.fixture(scope="module")
def dataset():
    return generate_synthetic_cxr(num_samples=400, image_size=64, seed=3)


def test_same_seed_same_bytes_other_seed_other_studies(dataset):
    again = generate_synthetic_cxr(num_samples=400, image_size=64, seed=3)
    assert np.array_equal(dataset.images, again.images) and dataset.reports == again.reports
    assert np.array_equal(dataset.labels, again.labels) and dataset.fingerprint == again.fingerprint
    other = generate_synthetic_cxr(num_samples=400, image_size=64, seed=4)
    assert not np.array_equal(dataset.images, other.images) and other.fingerprint != dataset.fingerprint


def test_study_depends_only_on_seed_and_index(dataset):
    smaller = generate_synthetic_cxr(num_samples=50, image_size=64, seed=3)
    assert np.array_equal(smaller.images, dataset.images[:50]) and smaller.reports == dataset.reports[:50]


def test_images_vary_and_findings_have_plausible_prevalence(dataset):
    assert dataset.images.shape == (400, 64, 64) and dataset.images.dtype == np.uint8
    assert dataset.images.std(axis=0).mean() > 5  # anatomy and noise differ between images
    prevalence = dataset.labels.mean(axis=0)
    assert (prevalence > 0.02).all() and (prevalence < 0.4).all()
    assert 0.2 < (dataset.labels.sum(axis=1) == 0).mean() < 0.5  # normal studies


def has(labels, *names):
    return any(labels[FINDING_INDEX[name]] for name in names)


def test_reports_never_contradict_their_labels(dataset):
    for report, labels in zip(dataset.reports, dataset.labels):
        text = report.lower()
        assert text.startswith("findings:") and "impression:" in text
        lungs = ("opacity_right_upper", "opacity_right_lower", "opacity_left_upper", "opacity_left_lower")
        if "no pleural effusion" in text or "no effusion" in text:
            assert not has(labels, "effusion_left", "effusion_right"), report
        if re.search(r"no (pleural effusion or )?pneumothorax|or pneumothorax", text):
            assert not has(labels, "pneumothorax_left", "pneumothorax_right"), report
        if "no focal" in text:
            assert not has(labels, *lungs), report
        if "lungs are clear" in text:
            assert not labels[1:].any(), report
        if "no suspicious pulmonary nodules" in text or "no nodules" in text:
            assert not has(labels, "nodule"), report
        if "heart size is normal" in text or "not enlarged" in text or "within normal limits" in text:
            assert not has(labels, "cardiomegaly"), report
        # every positive finding is stated with its side
        for side in ("left", "right"):
            if labels[FINDING_INDEX[f"effusion_{side}"]]:
                assert f"{side} pleural effusion" in text or "bilateral" in text, report
            if labels[FINDING_INDEX[f"pneumothorax_{side}"]]:
                assert f"{side} pneumothorax" in text or f"{side} apical pneumothorax" in text, report
        if labels[FINDING_INDEX["cardiomegaly"]]:
            assert "cardiomegaly" in text or "enlarged" in text, report


def test_normal_studies_read_normal(dataset):
    normal = [r for r, labels in zip(dataset.reports, dataset.labels) if not labels.any()]
    assert normal and all(re.search(r"no acute|no active disease|normal chest", r.lower()) for r in normal)


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    first = load_synthetic_cxr(20, 64, 1, tmp_path)
    monkeypatch.setattr(synthetic, "generate_synthetic_cxr", lambda *a: pytest.fail("regenerated despite the cache"))
    second = load_synthetic_cxr(20, 64, 1, tmp_path)
    assert np.array_equal(first.images, second.images) and first.reports == second.reports
    assert len(list((tmp_path / "datasets").glob("*.npz"))) == 1


def test_the_label_vocabulary_is_part_of_the_dataset_and_must_match_its_labels():
    import numpy as np

    from fedmm.data.dataset import MultimodalDataset
    from fedmm.data.findings import FINDINGS

    images, reports = np.zeros((2, 64, 64), np.uint8), ("a", "b")
    two = MultimodalDataset("two", "f", images, reports, np.zeros((2, 2), np.int8), FINDINGS[:2])
    assert [finding.name for finding in two.findings] == ["cardiomegaly", "effusion_left"]
    with pytest.raises(ValueError, match=r"labels of shape \(2, 3\) for 2 findings"):
        MultimodalDataset("bad", "f", images, reports, np.zeros((2, 3), np.int8), FINDINGS[:2])
