"""Early stopping: a validation split held out from the global test pool selects the round a run reports."""


import pytest
import torch
from helpers import tiny_split, user_config
from safetensors.torch import load_file

from fedmm.compose import compose_config
from fedmm.config import ConfigError, EarlyStoppingConfig
from fedmm.experiment import run_experiment
from fedmm.runs.recorder import global_metrics_by_round, read_metric_lines
from fedmm.runs.selection import ModelSelection, server_splits
from fedmm.validation import validate_config


def test_the_validation_split_is_a_seeded_disjoint_share_of_the_pool():
    pool = tiny_split(40)
    pool = type(pool)(pool.image_features, pool.report_features, pool.availability,
                      torch.arange(40, dtype=torch.int8).unsqueeze(1))  # the label column is the row's index
    cfg = user_config("early_stopping.metric=i2t_recall@10", "early_stopping.validation_fraction=0.3")
    validation, test = server_splits(cfg, pool)
    rows = lambda split: set(split.labels[:, 0].tolist())  # noqa: E731
    assert len(rows(validation)) == 12 and len(rows(test)) == 28 and not rows(validation) & rows(test)
    assert rows(server_splits(cfg, pool)[0]) == rows(validation)  # the same seed, the same split
    other = user_config("early_stopping.metric=i2t_recall@10", "early_stopping.validation_fraction=0.3", "seed=1")
    assert rows(server_splits(other, pool)[0]) != rows(validation)
    assert server_splits(user_config("early_stopping.metric=null"), pool) == (None, pool)  # the pool is the test set


def test_a_validation_split_too_small_for_the_metric_fails_before_training_naming_the_fix():
    cfg = user_config("early_stopping.metric=i2t_recall@10", "early_stopping.validation_fraction=0.5")
    with pytest.raises(ConfigError, match="needs more than 10 paired studies in the validation split, which holds 8"):
        server_splits(cfg, tiny_split(16))
    validation, _ = server_splits(cfg, tiny_split(24))  # 12 pairs: enough
    assert len(validation) == 12


def test_model_selection_keeps_the_first_best_round_and_counts_patience():
    selection = ModelSelection(EarlyStoppingConfig(metric="m", patience=2))
    improved = [selection.observe(r, {"m": v}) for r, v in ((2, 0.3), (4, 0.5), (6, 0.5), (8, 0.4))]
    assert improved == [True, True, False, False] and selection.best_round == 4 and selection.exhausted
    with pytest.raises(ValueError, match="not measured on the validation split"):
        selection.observe(10, {"other": 1.0})


@pytest.mark.parametrize("override, message", [
    ("early_stopping.metric=accuracy", "not a registered metric"),
    ("early_stopping.patience=0", "at least 1"),
    ("early_stopping.validation_fraction=1.0", "must lie in"),
])
def test_bad_early_stopping_options_are_named(override, message):
    cfg = user_config("early_stopping.metric=i2t_recall@10", override)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


@pytest.mark.parametrize("strategy", ["fedavg", "centralized"])
def test_a_run_reports_the_round_selected_on_validation_and_saves_its_heads(strategy, smoke_overrides, tmp_path):
    cfg = compose_config([*smoke_overrides, f"strategy={strategy}", "federation.rounds=8",
                          "federation.evaluate_every=1", "early_stopping.metric=i2t_recall@10",
                          "early_stopping.patience=2", f"run_dir={tmp_path}"])
    summary = run_experiment(cfg)
    lines = read_metric_lines(tmp_path)
    values = [(line["round"], line["validation"]["i2t_recall@10"]) for line in lines]
    best = max(values, key=lambda rv: (rv[1], -rv[0]))  # the best, the earliest among ties
    assert summary["evaluated_round"] == summary["selection"]["selected_round"] == best[0]
    selected = next(line for line in lines if line["round"] == best[0])
    assert summary["i2t_recall@10"] == selected["global"]["i2t_recall@10"]  # test metrics of that round
    curve = global_metrics_by_round(tmp_path)  # the test metrics of every evaluated round, whichever is selected
    assert sorted(curve) == [line["round"] for line in lines] and curve[best[0]] == selected["global"]
    assert summary["hospitals"] == selected["hospitals"]
    last = lines[-1]["round"]
    if last < 8:  # stopped: the last `patience` evaluations did not improve
        assert "early stopping" in summary["stopped"] and last - best[0] == 2
    assert summary["last_evaluated_round"] == last
    assert summary["last_round_metrics"] == lines[-1]["global"]  # the test metrics had it not selected
    heads, best_heads = load_file(tmp_path / "heads.safetensors"), load_file(tmp_path / "heads-best.safetensors")
    assert all(torch.equal(heads[key], best_heads[key]) for key in heads)
    assert (tmp_path / "heads-last.safetensors").exists()


def test_local_takes_every_hospital_at_its_own_best_round(smoke_overrides, tmp_path):
    cfg = compose_config([*smoke_overrides, "strategy=local", "federation.rounds=10", "federation.evaluate_every=1",
                          "early_stopping.metric=i2t_recall@10", "early_stopping.patience=2", f"run_dir={tmp_path}"])
    summary = run_experiment(cfg)
    lines = read_metric_lines(tmp_path)
    for hospital, selected in summary["selected_rounds"].items():
        curve = [(line["round"], line["hospital_validation"][hospital]) for line in lines]
        assert selected == max(curve, key=lambda rv: (rv[1], -rv[0]))[0]  # its own best, the earliest among ties
        at_selection = next(line for line in lines if line["round"] == selected)
        assert summary["hospitals"][hospital] == at_selection["hospitals"][hospital]  # its test metrics there
    if lines[-1]["round"] < 10:  # stopped: no hospital improved in the last `patience` evaluations
        assert lines[-1]["round"] - max(summary["selected_rounds"].values()) == 2
    assert len(set(summary["selected_rounds"].values())) > 1  # the hospitals' plateaus differ: a real test
