"""Every federated strategy through Flower's Simulation Engine, with an audit of what leaves each hospital."""

import json

import numpy as np
import pytest
from flwr.app import Array
from helpers import make_audit_mod

from fedmm import protocol as keys
from fedmm.compose import compose_config
from fedmm.experiment import run_experiment
from fedmm.federation import load_federated_data
from fedmm.models.heads import is_personal_layer
from fedmm.runs.recorder import read_metric_lines
from fedmm.strategies import Exchange, all_strategies, strategy_spec

FEDERATED = [spec.name for spec in all_strategies() if not spec.is_reference]


@pytest.mark.slow
@pytest.mark.parametrize("name", FEDERATED)
def test_strategy_runs_and_only_shared_arrays_leave_the_hospitals(name, smoke_overrides, tmp_path):
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    cfg = compose_config([*smoke_overrides, f"strategy={name}", f"run_dir={tmp_path / 'run'}"])
    summary = run_experiment(cfg, client_mods=[make_audit_mod(audit_dir)])
    spec = strategy_spec(name)
    entries = [json.loads(path.read_text()) for path in audit_dir.glob("*.json")]
    train = [e for e in entries if e["type"].startswith("train")]

    # The run itself: two rounds, every hospital evaluated, bytes measured
    lines = read_metric_lines(tmp_path / "run")
    assert [line["round"] for line in lines] == [1, 2] and set(summary["hospitals"]) == {"0", "1", "2"}
    sent = [
        sum(len(Array(np.zeros(shape, dtype=np.float32)).data) for shape in e["reply_shapes"].values()) for e in train
    ]
    assert summary["upload_bytes_per_round"] == pytest.approx(np.mean(sent))  # all arrays are float32
    assert ("i2t_recall@10" in summary) == spec.has_global_model
    if spec.personal_model is not None:  # judged on each hospital's own split, with its own model
        assert all("personal_zeroshot_auroc_macro" in summary["hospitals"][h] for h in ("0", "1"))
        assert "personal_zeroshot_auroc_macro" in summary["hospital_worst"]

    # The audit: replies hold only arrays and metrics ...
    assert len(train) == 6  # 3 hospitals x 2 rounds
    for entry in entries:  # (SCAFFOLD: and its named control variates)
        expected = {keys.METRICS: "MetricRecord"} | (
            {name: "ArrayRecord" for name in (keys.ARRAYS, *spec.extra_arrays)} if entry["type"].startswith("train")
            else {}
        )
        assert entry["reply_records"] == expected, entry
    # ... never a private array: no private value under any name (FedPer/FedRep: no final layer by name either).
    # SCAFFOLD's Δc_i is the one array derived from private state that the algorithm sends, under its own name.
    # MOON's private state is the model it trained and sent: its "previous local model".
    shares_base_only = not spec.has_global_model
    for entry in train:
        heads_sent = {key.split("/", 1)[1]: value for key, value in entry["reply_arrays"].items()
                      if key.startswith(keys.ARRAYS + "/")}
        assert not (shares_base_only and any(is_personal_layer(key) for key in heads_sent))
        if name == "moon":
            assert entry["personal"] == heads_sent
            continue
        private = set((entry["personal"] or {}).values()) - set(entry["received"])
        # Scalars are left out: Adam moves a scalar whose gradient keeps its sign by exactly lr per step,
        # so Ditto's two temperatures can coincide bit for bit without one being copied from the other.
        leaked = sorted(
            key
            for key, value in entry["reply_arrays"].items()
            if value in private and np.prod(entry["reply_shapes"][key]) > 1
            and key.split("/", 1)[0] not in spec.extra_arrays
        )
        assert not leaked, f"hospital {entry['hospital']} sent private arrays {leaked} in round {entry['round']}"
    if spec.exchanges is Exchange.EMBEDDINGS:  # distillation: reference embeddings of the modalities held, no weights
        reference_size, embed_dim = cfg.reference.num_samples, cfg.heads.embed_dim
        for entry in train:
            assert set(entry["reply_arrays"]) <= {f"{keys.ARRAYS}/{keys.IMAGE_EMBEDDINGS}",
                                                  f"{keys.ARRAYS}/{keys.REPORT_EMBEDDINGS}"}
            assert all(shape == [reference_size, embed_dim] for shape in entry["reply_shapes"].values())
        image_only = [e for e in train if e["hospital"] == 1]
        assert all(set(e["reply_arrays"]) == {f"{keys.ARRAYS}/{keys.IMAGE_EMBEDDINGS}"} for e in image_only)
    # Private state is kept across rounds by the strategies that have one, and changes with training
    paired_hospital = sorted((e for e in train if e["hospital"] == 0), key=lambda e: e["round"])
    if spec.keeps_private_state:
        assert all(e["personal"] for e in train)
        assert paired_hospital[0]["personal"] != paired_hospital[1]["personal"]
    else:
        assert all(e["personal"] is None for e in train)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, handler", [("ditto", "retrieval"), ("fedrep", "prototype")])
def test_missing_modality_handlers_train_the_image_only_hospital_in_personalized_strategies(
    smoke_overrides, tmp_path, strategy, handler
):
    cfg = compose_config(
        [*smoke_overrides, f"strategy={strategy}", f"missing={handler}", f"run_dir={tmp_path / 'run'}"]
    )
    run_experiment(cfg)
    lines = read_metric_lines(tmp_path / "run")
    image_only = lines[0]["train"]["1"]  # smoke: hospital 1 holds images only
    assert image_only["num-image-used"] == len(load_federated_data(cfg).hospital(1).train) > 0
    assert (image_only["num-paired-used"], image_only["num-report-used"]) == (0, 0)
    assert image_only["train-steps"] > 0 and image_only["train-loss"] > 0
