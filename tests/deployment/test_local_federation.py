"""The Deployment Engine path: hospitals read their own folders, the server its test folder, and only head
weights and metrics (or reference embeddings) leave a hospital. The loopback tests start real Flower
processes: a SuperLink and one SuperNode per hospital on 127.0.0.1."""

import csv
import json
import re
import shutil
import time

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from helpers import session_dir

from fedmm import protocol as keys
from fedmm.clients.app import make_client_app
from fedmm.clients.runtime import hospital_runtime
from fedmm.compose import compose_config
from fedmm.config import ConfigError
from fedmm.data import folder_dataset
from fedmm.data.export import export_synthetic
from fedmm.data.findings import FINDING_NAMES
from fedmm.data.hospital_folder import MANIFEST, HospitalFolderError
from fedmm.deployment.local import COMPLETED, LocalFederation, alive_in_groups, find_folders
from fedmm.experiment import run_experiment
from fedmm.federation import load_folder_features, load_hospital_folder, load_server_data
from fedmm.models.heads import build_heads
from fedmm.runs.recorder import read_metric_lines

# Every metric name a hospital may publish: counts, losses, privacy accounting and aggregate evaluation
# metrics of its own test split. Anything else in a reply fails the audit.
ALLOWED_METRICS = re.compile(
    r"(hospital-id|group|num-examples|num-paired|num-image|num-report|num-paired-used|num-image-used|num-report-used"
    r"|train-loss|train-steps|train-samples|privacy-exhausted|dp-epsilon|dp-delta|dp-noise-multiplier|dp-steps"
    r"|(personal_)?(chance_)?(num_paired|num_image|num_report|[it]2[it]_(recall|precision)@\d+"
    r"|(report_)?zeroshot_auroc_\w+))"
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, cache_dir):
    """The smoke federation exported as hospital folders (hospital-0..2, server-test), once per session for
    every worker, with their feature caches built here, in one process: otherwise every node of the first
    loopback run builds its own at once (a node building its cache is `load_folder_features`, tested below).
    Tests read these folders; one that edits a folder edits a copy (`copy_of_hospital_0`)."""
    root, lock = session_dir(tmp_path_factory, "hospital-folders")
    with lock:
        if not (root / "built").exists():
            cfg = compose_config(["+experiment=smoke", f"cache_dir={cache_dir}"])
            export_synthetic(cfg, root)
            for folder in sorted(path for path in root.iterdir() if path.is_dir()):
                load_folder_features(cfg, folder)
            (root / "built").touch()
    return root


def smoke(cache_dir, *overrides):
    return compose_config(["+experiment=smoke", f"cache_dir={cache_dir}", *overrides])


def copy_of_hospital_0(folders, tmp_path, edit=None):
    """hospital-0's folder copied without its cache; `edit(rows)` may change its manifest rows in place."""
    folder = tmp_path / "hospital"
    shutil.copytree(folders / "hospital-0", folder, ignore=shutil.ignore_patterns(".fedmm-cache"))
    if edit is not None:
        with open(folder / MANIFEST, newline="") as handle:
            rows = list(csv.DictReader(handle))
        edit(rows)
        with open(folder / MANIFEST, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


def test_a_hospital_read_from_its_folder_holds_what_the_simulated_hospital_holds(folders, cache_dir):
    cfg = smoke(cache_dir)
    for hospital in range(3):
        simulated = hospital_runtime(cfg, hospital).data
        from_folder = hospital_runtime(cfg, hospital, str(folders / f"hospital-{hospital}")).data
        assert from_folder.group == simulated.group
        for split in ("train", "test"):
            mine, theirs = getattr(from_folder, split), getattr(simulated, split)
            assert torch.equal(mine.availability, theirs.availability) and torch.equal(mine.labels, theirs.labels)
            # Features of the modalities held are the same numbers (PNG is lossless); absent ones are never read.
            torch.testing.assert_close(mine.image_features[mine.image_mask], theirs.image_features[theirs.image_mask])
            torch.testing.assert_close(
                mine.report_features[mine.report_mask], theirs.report_features[theirs.report_mask]
            )
    server = load_server_data(smoke(cache_dir, f"deployment.server_test_dir={folders / 'server-test'}"))
    simulated_server = load_server_data(cfg)
    torch.testing.assert_close(server.global_test.image_features, simulated_server.global_test.image_features)
    assert torch.equal(server.global_test.labels, simulated_server.global_test.labels)


def test_the_folder_feature_cache_is_reused_and_only_a_changed_file_is_decoded_again(folders, cache_dir, tmp_path,
                                                                                       monkeypatch):
    folder = copy_of_hospital_0(folders, tmp_path)
    cfg = smoke(cache_dir)
    first, _ = load_hospital_folder(cfg, folder, 0)
    assert list((folder / ".fedmm-cache" / "features" / "studies").glob("image-*/shard-*.safetensors"))

    decoded = []
    original = folder_dataset.decode_image
    monkeypatch.setattr(folder_dataset, "decode_image", lambda *a: decoded.append(a[2]) or original(*a))
    again, _ = load_hospital_folder(cfg, folder, 0)  # unchanged: from the cache, no file decoded
    assert decoded == [] and torch.equal(again.train.image_features, first.train.image_features)

    image = sorted((folder / "images").glob("*.png"))[0]
    from PIL import Image

    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(image)  # the same name, new pixels
    changed, _ = load_hospital_folder(cfg, folder, 0)
    assert decoded == [f"images/{image.name}"]  # that file alone is decoded again
    both = [torch.cat([hospital.train.image_features, hospital.test.image_features]) for hospital in (first, changed)]
    assert (both[0] != both[1]).any(dim=1).sum() == 1  # that study's features, and no other's

    image.unlink()  # a broken folder is refused with the row and the command that lists every problem
    with pytest.raises(
        HospitalFolderError,
        match=rf"(?s)run `fedmm data validate .*row \d+, column image: "
        rf"images/{image.name}: file not found",
    ):
        load_hospital_folder(cfg, folder, 0)


def test_a_bad_label_cell_is_named_before_any_training(folders, cache_dir, tmp_path):
    folder = copy_of_hospital_0(folders, tmp_path, edit=lambda rows: rows[2].update({FINDING_NAMES[0]: "maybe"}))
    with pytest.raises(
        HospitalFolderError, match=rf"row 3, column {FINDING_NAMES[0]}: label 'maybe' must be 1, 0 or empty"
    ):
        load_hospital_folder(smoke(cache_dir), folder, 0)


def test_fedmm_deploy_names_bad_input_before_starting_anything(folders, tmp_path, capsys):
    from fedmm.cli import main

    # Overrides may follow the options; a folder without hospitals is named with the command that makes them.
    assert main(["deploy", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "+experiment=smoke"]) == 1
    assert "no hospital-<id> folders" in capsys.readouterr().out and not (tmp_path / "out").exists()
    assert main(["deploy", str(folders), "scenario=deployment", "scenario.num_hospitals=4"]) == 2  # mismatch
    assert "scenario.num_hospitals=4, but there are 3 hospital folders" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):  # an unknown option is still refused by argparse
        main(["deploy", str(folders), "--no-such-option"])


def test_the_server_test_folder_must_hold_pairs(folders, cache_dir):
    with pytest.raises(ConfigError, match=r"studies lack an image or a report"):
        load_server_data(smoke(cache_dir, f"deployment.server_test_dir={folders / 'hospital-1'}"))  # image-only
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load_server_data(smoke(cache_dir, f"deployment.server_test_dir={folders / 'nowhere'}"))


def test_unknown_labels_are_left_out_of_the_metrics(folders, cache_dir, tmp_path):
    """A folder whose label cells are empty (unknown) still trains and evaluates; label-based metrics skip them."""
    folder = copy_of_hospital_0(
        folders, tmp_path, edit=lambda rows: [row.update({finding: "" for finding in FINDING_NAMES}) for row in rows]
    )
    hospital, _ = load_hospital_folder(smoke(cache_dir), folder, 0)
    assert (hospital.test.labels == -1).all()
    from fedmm.evaluation.evaluate import evaluate_split

    runtime = hospital_runtime(smoke(cache_dir), 0, str(folder))
    metrics = evaluate_split(runtime.heads, hospital.test, runtime.prompts)
    assert "i2t_recall@10" in metrics  # pairs need no labels
    assert not any("precision" in name or "auroc" in name for name in metrics)


@pytest.mark.usefixtures("flower_run_identity")
@pytest.mark.parametrize("strategy", ["fedavg", "ditto", "feddistill"])
def test_a_hospital_replies_with_head_weights_or_reference_embeddings_and_metrics_only(strategy, folders, cache_dir):
    """The audit: every reply of a folder-backed ClientApp to every kind of message holds one MetricRecord of
    allowed names and, for training, one ArrayRecord of the shared head parameters (distillation: reference
    embeddings), of their exact shapes. Nothing per study, no text, no config."""
    cfg = smoke(cache_dir, f"strategy={strategy}")
    app = make_client_app(cfg)
    runtime = hospital_runtime(cfg, 0, str(folders / "hospital-0"))
    heads = build_heads(
        runtime.data.train.image_features.shape[1], runtime.data.train.report_features.shape[1], cfg.heads, 0
    )
    shapes = {name: tuple(value.shape) for name, value in heads.state_dict().items()}
    reference = (cfg.reference.num_samples, cfg.heads.embed_dim)
    context = Context(
        run_id=1,
        node_id=0,
        node_config={"partition-id": 0, "data-dir": str(folders / "hospital-0")},
        state=RecordDict(),
        run_config={},
    )
    config = ConfigRecord({keys.SERVER_ROUND: 1, "distill-weight": 1.0})
    arrays = ArrayRecord(heads.state_dict())
    if strategy == "feddistill":
        embeddings = {
            keys.IMAGE_EMBEDDINGS: np.zeros(reference, np.float32),
            keys.REPORT_EMBEDDINGS: np.zeros(reference, np.float32),
        }
        train = (MessageType.TRAIN + ".distill", ArrayRecord({k: Array(v) for k, v in embeddings.items()}))
    else:
        train = (MessageType.TRAIN, arrays)
    sent = [(MessageType.QUERY, None), train, (MessageType.EVALUATE, arrays)]
    for message_type, payload in sent:
        content = RecordDict({keys.CONFIG: config} | ({keys.ARRAYS: payload} if payload is not None else {}))
        reply = app(Message(content, dst_node_id=0, message_type=message_type), context)
        assert not reply.has_error(), reply.error
        records = dict(reply.content.items())
        is_train = message_type.startswith(MessageType.TRAIN)
        assert set(records) == ({keys.METRICS, keys.ARRAYS} if is_train else {keys.METRICS}), message_type
        unexpected = [name for name in records[keys.METRICS] if not ALLOWED_METRICS.fullmatch(name)]
        assert not unexpected, f"{message_type} reply publishes {unexpected}"
        assert all(isinstance(value, (int, float)) for value in records[keys.METRICS].values())
        if is_train:
            replied = {name: tuple(array.shape) for name, array in records[keys.ARRAYS].items()}
            if strategy == "feddistill":
                assert replied == {keys.IMAGE_EMBEDDINGS: reference, keys.REPORT_EMBEDDINGS: reference}
            else:
                assert replied == shapes  # the shared heads, nothing else


def run_on_loopback(folders, out, overrides, tls=False, node_auth=False, kill_after_round=None, timeout_s=480):
    """Start a local federation, run the app, optionally kill hospital 2 once round `kill_after_round` is
    recorded; returns (status, details, run_dir, process groups)."""
    run_dir = out / "run"
    with LocalFederation(out, find_folders(folders), tls=tls, node_auth=node_auth) as federation:
        run_id = federation.submit(overrides, run_dir)
        killed = []

        def kill_when_due() -> None:
            metrics = run_dir / "metrics.jsonl"
            if (
                kill_after_round is not None
                and not killed
                and metrics.exists()
                and len(metrics.read_text().splitlines()) >= kill_after_round
            ):
                federation.kill_hospital(2)
                killed.append(time.monotonic())

        status, details = federation.wait(run_id, timeout_s, on_poll=kill_when_due)
        groups = federation.process_groups()
    assert kill_after_round is None or killed, "the run finished before the node could be killed"
    return status, details, run_dir, groups


# The two loopback runs are the suite's longest tests (about 2 min each, mostly waiting on Flower's message
# polling and, for a killed node, its 60 s heartbeat timeout), so each proves several things at once. They are
# in xdist group "waits": one worker runs them in turn, from the start, beside the rest (side by side they
# slow each other down more than they gain).


@pytest.mark.slow
@pytest.mark.xdist_group("waits")
def test_a_loopback_deployment_computes_what_the_simulation_does_and_stops_below_the_minimum(folders, cache_dir,
                                                                                            tmp_path):
    overrides = ["+experiment=smoke", f"cache_dir={cache_dir}", "federation.rounds=2"]  # min_hospitals: all 3
    status, details, run_dir, groups = run_on_loopback(folders, tmp_path / "deploy", overrides, kill_after_round=1)
    assert not alive_in_groups(groups)
    # Round 1, with every node: the same federation in simulation gives the same evaluation, number for number
    # (training losses may differ in the last float bits: a node uses all cores, a simulated hospital one thread).
    deployed = read_metric_lines(run_dir)
    assert [line["round"] for line in deployed] == [1]  # round 1 finished and is kept
    assert sorted(deployed[0]["hospitals"]) == ["0", "1", "2"]
    reference = tmp_path / "simulated"
    run_experiment(compose_config([*overrides, "simulation.engine=inprocess", f"run_dir={reference}"]))
    simulated = read_metric_lines(reference)[0]
    assert deployed[0]["global"] == simulated["global"] and deployed[0]["hospitals"] == simulated["hospitals"]
    # Round 2, without the node killed after round 1: too few remain, so the run stops, and says why.
    assert status == "finished:failed"
    assert re.search(r"hospital\(s\) \[2\] failed .*2 of 3 remain, fewer than federation.min_hospitals=3", details)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "fewer than federation.min_hospitals=3" in summary["stopped"] and summary["evaluated_round"] == 1


@pytest.mark.slow
@pytest.mark.xdist_group("waits")
def test_over_tls_with_node_authentication_and_secagg_a_run_completes_without_a_dead_node(folders, cache_dir,
                                                                                         tmp_path):
    # SecAgg+ too (what `fedmm deploy --secagg` sets): the threshold (2 of 3) holds without the dead node.
    overrides = ["+experiment=smoke", f"cache_dir={cache_dir}", "federation.rounds=2", "federation.min_hospitals=2",
                 "secagg.enabled=true"]
    out = tmp_path / "deploy"
    status, details, run_dir, groups = run_on_loopback(
        folders, out, overrides, tls=True, node_auth=True, kill_after_round=1
    )
    assert status == COMPLETED, details
    assert not alive_in_groups(groups)
    assert "https://127.0.0.1" in (out / "logs" / "superlink.log").read_text()  # TLS, not a silent fallback
    rounds = read_metric_lines(run_dir)
    assert [line["round"] for line in rounds] == [1, 2]  # round 2 without the node killed after round 1
    assert sorted(rounds[0]["hospitals"]) == ["0", "1", "2"] and sorted(rounds[-1]["hospitals"]) == ["0", "1"]
    assert sorted(rounds[-1]["train"]) == ["0", "1"] and "skipped" not in rounds[-1]
    assert all(set(metrics) <= {"hospital-id", "upload-bytes", "download-bytes"}  # masked replies: no counts
               for line in rounds for metrics in line["train"].values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["lost_hospitals"]) == ["2"] and "Node Unavailable" in summary["lost_hospitals"]["2"]
    assert summary["evaluated_round"] == 2 and "stopped" not in summary
