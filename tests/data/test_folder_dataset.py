"""dataset=folder: a manifest with sites, its own labels and prompts, simulated as one hospital per site."""

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fedmm.compose import compose_config
from fedmm.config import ConfigError
from fedmm.data import folder_dataset
from fedmm.data.folder_dataset import FolderImages, load_folder_dataset
from fedmm.data.hospital_folder import MANIFEST, HospitalFolderError, write_hospital_folder
from fedmm.data.partition import SMALL_SITES
from fedmm.data.synthetic import generate_synthetic_cxr
from fedmm.experiment import run_experiment
from fedmm.federation import load_federated_data, load_reference, resolve_hospitals
from fedmm.models.features import load_features
from fedmm.runs.recorder import read_metric_lines
from fedmm.studies.sweep import compose_cells, make_cells, parse_sweep

SITES = {"north": 90, "south": 70, "east": 60, "tiny-a": 12, "tiny-b": 16}  # studies per site
LABELS = ("cardiomegaly", "effusion")  # the dataset's own vocabulary: two columns of its manifest


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """240 synthetic studies as a dataset folder: 2 studies per patient, 5 sites, some studies missing a
    modality on disk, one rectangular JPEG, a test split by patient, two label columns (some unknown)."""
    root = tmp_path_factory.mktemp("folder-dataset")
    total = sum(SITES.values())
    studies = generate_synthetic_cxr(total, 64, seed=5)
    patients = [f"p{index // 2}" for index in range(total)]
    splits = ["test" if int(patient[1:]) % 5 == 0 else "train" for patient in patients]
    images = [None if index % 17 == 3 else studies.images[index] for index in range(total)]
    reports = [None if index % 13 == 5 and images[index] is not None else studies.reports[index]
               for index in range(total)]
    write_hospital_folder(root, [f"s{i}" for i in range(total)], patients, images, reports, splits)
    Image.fromarray(np.full((40, 90), 128, np.uint8)).convert("RGB").save(root / "images" / "wide.jpg")
    sites = [site for site, count in SITES.items() for _ in range(count)]
    with open(root / MANIFEST, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for index, row in enumerate(rows):
        row["site"] = sites[index]
        row["cardiomegaly"] = str(int(studies.labels[index, 0]))
        row["effusion"] = "" if index % 7 == 0 else str(int(studies.labels[index, 1] or studies.labels[index, 2]))
    rows[1]["image"] = "images/wide.jpg"  # any size and aspect: fitted, padded
    with open(root / MANIFEST, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "prompts.yaml").write_text(yaml.safe_dump({
        "cardiomegaly": {"positive": ["The heart is enlarged."], "negative": ["Heart size is normal."]}}))
    return root


def folder_overrides(dataset_dir, cache_dir, *more):
    # resnet18: the cheapest encoder for whole runs (the folder default, EfficientNet-Lite0: tests/models)
    return ["dataset=folder", f"dataset.path={dataset_dir}", "dataset.image_size=64", "encoders/image=resnet18",
            "encoders.image.input_size=64",
            "scenario=natural", "heads.hidden_dim=64", "heads.embed_dim=32", "federation.rounds=2",
            "federation.evaluate_every=1", "reference.num_samples=120", "simulation.engine=inprocess",
            f"cache_dir={cache_dir}", *more]


def test_natural_sites_become_hospitals_split_by_patient(dataset_dir, cache_dir):
    cfg = resolve_hospitals(compose_config(folder_overrides(dataset_dir, cache_dir)))
    assert cfg.scenario.num_hospitals == 4  # north, south, east, and the two tiny sites merged ("small sites")
    data = load_federated_data(cfg)
    patients = [f"p{index // 2}" for index in range(sum(SITES.values()))]
    holders = [set(data.federation.global_test_indices)] + [
        set(part.train_indices) | set(part.test_indices) for part in data.federation.hospitals]
    owners: dict[str, int] = {}
    for holder, rows in enumerate(holders):
        for row in rows:
            assert owners.setdefault(patients[row], holder) == holder, f"patient {patients[row]} in two holders"
    for part in data.federation.hospitals:  # local test split by patient too
        assert not {patients[r] for r in part.train_indices} & {patients[r] for r in part.test_indices}
    global_patients = {patients[row] for row in data.federation.global_test_indices}
    assert global_patients and all(int(patient[1:]) % 5 == 0 for patient in global_patients)  # the manifest's test
    assert data.features.finding_names == LABELS


def test_a_site_too_small_is_named_with_every_site_and_the_fix(dataset_dir, cache_dir):
    cfg = compose_config(folder_overrides(dataset_dir, cache_dir, "scenario.sites.min_studies=12"))
    with pytest.raises(ConfigError, match=r"\[\('small sites', 8\)\] have too few training studies .*"
                                          r"'tiny-a': 8, 'tiny-b': 14\}.*scenario.sites.groups"):
        resolve_hospitals(cfg)  # tiny-b alone (14 training studies), tiny-a (8) left as the only small site
    grouped = compose_config(folder_overrides(dataset_dir, cache_dir, "scenario.sites.min_studies=12",
                                              "scenario.sites.groups=[[tiny-a,east]]"))
    assert resolve_hospitals(grouped).scenario.num_hospitals == 4  # tiny-a + east, north, south, tiny-b


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedavg", "ditto", "feddistill"])  # averaging, personalized, distillation
def test_fedmm_run_on_a_folder_dataset_by_site(strategy, dataset_dir, cache_dir, tmp_path):
    summary = run_experiment(compose_config(folder_overrides(dataset_dir, cache_dir, f"strategy={strategy}",
                                                             f"run_dir={tmp_path}")))
    assert set(summary["hospitals"]) == {"0", "1", "2", "3"}
    # which site each hospital is: the sites large enough alone, by name, then the small ones merged
    assert summary["hospital_sites"] == {"0": "east", "1": "north", "2": "south", "3": SMALL_SITES}
    assert 0.0 <= summary["i2t_recall@10"] <= 1.0
    assert "zeroshot_auroc_cardiomegaly" in summary and "zeroshot_auroc_effusion" in summary
    lines = read_metric_lines(tmp_path)
    assert [line["round"] for line in lines] == [1, 2]


def test_prompts_for_a_label_the_manifest_lacks_are_named(dataset_dir, cache_dir, tmp_path):
    bad = tmp_path / "prompts.yaml"
    bad.write_text(yaml.safe_dump({"pneumonia": {"positive": ["Pneumonia."], "negative": ["No pneumonia."]}}))
    cfg = compose_config(folder_overrides(dataset_dir, cache_dir, f"dataset.prompts={bad}"))
    with pytest.raises(ConfigError, match=rf"{bad}: prompts for \['pneumonia'\], which are not label columns"):
        load_federated_data(resolve_hospitals(cfg))


@pytest.mark.slow
def test_a_public_folder_can_be_the_reference_set_but_not_the_federation_s_own(dataset_dir, cache_dir, tmp_path):
    public = tmp_path / "public"
    studies = generate_synthetic_cxr(60, 64, seed=9)
    write_hospital_folder(public, [f"r{i}" for i in range(60)], [f"q{i}" for i in range(60)], list(studies.images),
                          [None if i % 10 == 0 else report for i, report in enumerate(studies.reports)], ["train"] * 60)
    own = compose_config(folder_overrides(dataset_dir, cache_dir, "strategy=feddistill", "reference.name=folder",
                                          f"reference.path={dataset_dir}", "reference.num_samples=null"))
    with pytest.raises(ConfigError, match="is the federation's own dataset"):
        run_experiment(own)
    summary = run_experiment(compose_config(folder_overrides(
        dataset_dir, cache_dir, "strategy=feddistill", "reference.name=folder", f"reference.path={public}",
        "reference.num_samples=null", f"run_dir={tmp_path / 'run'}")))
    assert summary.get("last_evaluated_round", summary["evaluated_round"]) == 2  # both rounds ran
    public_cfg = dataclasses.replace(own, reference=dataclasses.replace(own.reference, path=str(public)))
    assert len(load_reference(public_cfg)) == 54  # its paired studies: 54 of 60


@pytest.mark.slow
def test_a_dataset_without_labels_reports_retrieval_only_and_says_so(dataset_dir, cache_dir, tmp_path, capsys):
    from fedmm.cli import main

    unlabeled = tmp_path / "unlabeled"
    shutil.copytree(dataset_dir, unlabeled, ignore=shutil.ignore_patterns("prompts.yaml"))
    with open(unlabeled / MANIFEST, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(unlabeled / MANIFEST, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c in rows[0] if c not in LABELS])
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k not in LABELS} for row in rows)
    assert main(["run", *folder_overrides(unlabeled, cache_dir, f"run_dir={tmp_path / 'run'}")]) == 0
    assert "no label columns: retrieval only" in " ".join(capsys.readouterr().out.split())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "i2t_recall@10" in summary and not any("auroc" in key or "precision" in key for key in summary)


def test_a_folder_dataset_needs_its_path_and_a_manifest_there_and_defaults_to_imagenet_features(tmp_path):
    from fedmm.validation import validate_config

    chosen = compose_config(["dataset=folder", f"dataset.path={tmp_path}"]).encoders.image
    assert (chosen.name, chosen.weights, chosen.input_size) == ("efficientnet_lite0", "packaged", 224)
    assert compose_config(["dataset=folder", "encoders/image=resnet18"]).encoders.image.name == "resnet18"

    with pytest.raises(ConfigError, match=r"dataset=folder needs dataset.path=DIR"):
        validate_config(compose_config(["dataset=folder"]))
    with pytest.raises(ConfigError, match=rf"dataset.path='{tmp_path}': no manifest.csv there"):
        validate_config(compose_config(["dataset=folder", f"dataset.path={tmp_path}"]))


def test_images_are_decoded_a_batch_at_a_time_and_a_bad_file_loses_nothing_already_extracted(
        dataset_dir, tmp_path, monkeypatch):
    folder = tmp_path / "copy"
    shutil.copytree(dataset_dir, folder, ignore=shutil.ignore_patterns(".fedmm-cache"))
    broken = sorted((folder / "images").glob("s1*.png"))[3]
    broken.write_bytes(b"not a PNG")  # the manifest still names it
    cfg = compose_config(folder_overrides(folder, tmp_path / "cache", "encoders.image.batch_size=32"))
    dataset = load_folder_dataset(cfg.dataset)  # every cell and file checked, no image decoded yet
    assert dataset.read_from_disk and not isinstance(dataset.images, np.ndarray)

    decoded, largest = [], []
    original_read = FolderImages.read

    def counting_read(self, rows):
        largest.append(len(rows))
        return original_read(self, rows)

    monkeypatch.setattr(FolderImages, "read", counting_read)
    original = folder_dataset.decode_image
    monkeypatch.setattr(folder_dataset, "decode_image", lambda *a: decoded.append(a[2]) or original(*a))
    with pytest.raises(HospitalFolderError, match=rf"row \d+, column image: images/{broken.name}: unreadable image"):
        load_features(dataset, cfg.encoders, cfg.cache_dir)
    images = [name for name in dataset.images.files if name]
    assert sorted(decoded) == sorted(images) and max(largest) == 32  # each file once, 32 at a time

    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(broken)  # the fix
    decoded.clear()
    fixed = load_features(load_folder_dataset(cfg.dataset), cfg.encoders, cfg.cache_dir)
    assert decoded == [f"images/{broken.name}"]  # only the fixed file: the others' features were kept
    row = list(dataset.images.files).index(f"images/{broken.name}")
    whole = load_features(load_folder_dataset(cfg.dataset), cfg.encoders, tmp_path / "fresh-cache")
    torch.testing.assert_close(fixed.image_features, whole.image_features)  # the same as extracting at once
    torch.testing.assert_close(fixed.report_features, whole.report_features)
    assert fixed.image_features[row].abs().sum() > 0


def test_a_sweep_over_a_folder_resolves_its_site_hospitals_before_validating(dataset_dir, cache_dir, tmp_path,
                                                                            monkeypatch):
    import fedmm.federation

    loads, load = [], fedmm.federation.load_dataset
    monkeypatch.setattr(fedmm.federation, "load_dataset", lambda *args: loads.append(args) or load(*args))
    cells = make_cells(*parse_sweep([*folder_overrides(dataset_dir, cache_dir), "strategy=fedavg,centralized"]))
    configs = compose_cells(cells, tmp_path)  # a cell's scenario=natural: not refused for its null num_hospitals
    assert [cfg.scenario.num_hospitals for cfg in configs] == [4, 4]  # as `fedmm run` resolves them
    assert len(loads) == 1  # the manifest is read once for all the cells
