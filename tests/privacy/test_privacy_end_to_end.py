"""Privacy through the Simulation Engine (3 hospitals): cumulative ε per round against an independent
accountant, budgets that stop a hospital or the run, and client-level DP with seeded noise."""

import csv
import json

import dp_accounting
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from safetensors.torch import load_file

from fedmm.compose import compose_config
from fedmm.config import ConfigError
from fedmm.experiment import run_experiment
from fedmm.privacy.accounting import SampledGaussianSteps, epsilon_spent
from fedmm.runs.recorder import read_metric_lines

pytestmark = pytest.mark.slow
SIGMA = 1.0


def independent_epsilon(sample_rate: float, noise: float, steps: int, delta: float) -> float:
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise)), steps)
    return accountant.get_epsilon(delta)


def budget_between_rounds(delta: float) -> float:
    """A budget with room for one round of hospital 0 (64 pairs, q = 1, 2 steps per round) but not two."""
    one, two = (epsilon_spent((SampledGaussianSteps(SIGMA, 1.0, 2),) * k, delta) for k in (1, 2))
    return (one + two) / 2


def dp_sgd_run(smoke_overrides, run_dir, on_budget: str) -> tuple[dict, list]:
    cfg = compose_config([*smoke_overrides, "privacy=dp_sgd", "privacy.sample.target_epsilon=null",
                          f"privacy.sample.noise_multiplier={SIGMA}", "privacy.sample.delta=1e-3",
                          f"privacy.sample.max_epsilon={budget_between_rounds(1e-3)}", f"privacy.on_budget={on_budget}",
                          "federation.rounds=3", f"run_dir={run_dir}"])
    return run_experiment(cfg), read_metric_lines(run_dir)


def test_dp_sgd_reports_cumulative_epsilon_and_a_hospital_stops_at_its_budget(smoke_overrides, tmp_path):
    summary, lines = dp_sgd_run(smoke_overrides, tmp_path / "run", "stop_hospital")
    budget = budget_between_rounds(1e-3)
    trained_rounds: dict[str, int] = {}
    for line in lines:
        for hospital, metrics in line["train"].items():
            assert "train-loss" not in metrics or metrics["num-paired-used"] == 0  # no private loss published
            assert metrics["dp-epsilon"] <= budget  # never exceeded, in any round
            if "dp-delta" not in metrics:  # the image-only hospital: nothing to train, nothing spent
                assert metrics["dp-epsilon"] == 0.0
                continue
            if not metrics["privacy-exhausted"]:
                trained_rounds[hospital] = trained_rounds.get(hospital, 0) + 1
            steps = metrics["dp-steps"]
            assert steps == 2 * trained_rounds[hospital]  # q = 1 here: one step per epoch, 2 epochs per round
            expected = independent_epsilon(1.0, SIGMA, steps, metrics["dp-delta"])
            assert metrics["dp-epsilon"] == pytest.approx(expected, rel=0.01)
    assert [line["round"] for line in lines] == [1, 2, 3]
    assert lines[1]["train"]["0"]["privacy-exhausted"] == 1 and lines[1]["train"]["0"]["train-steps"] == 0
    assert "0" not in lines[2]["train"]  # retired: not asked again
    privacy = summary["privacy"]
    assert privacy["hospitals"]["0"]["retired"] == "sample-level privacy budget"
    assert privacy["hospitals"]["0"]["dp_epsilon"] == lines[0]["train"]["0"]["dp-epsilon"]
    assert privacy["max_dp_epsilon"] <= budget
    assert "stopped" not in summary


def test_stop_run_ends_the_run_at_the_budget_and_keeps_finished_rounds(smoke_overrides, tmp_path):
    summary, lines = dp_sgd_run(smoke_overrides, tmp_path / "run", "stop_run")
    assert [line["round"] for line in lines] == [1, 2]  # round 2 found the budget reached; round 3 never ran
    assert "global" in lines[-1]  # the last round is evaluated
    assert "sample-level privacy budget" in summary["stopped"] and summary["evaluated_round"] == 2
    assert (tmp_path / "run" / "heads.safetensors").exists()


def client_level_run(smoke_overrides, run_dir):
    cfg = compose_config([*smoke_overrides, "strategy=fedavgm", "strategy.modality_aware=false", "privacy=client_fixed",
                          "privacy.client.clipping=client_adaptive", "privacy.client.clipped_count_stddev=1.0",
                          "privacy.client.noise_multiplier=0.8", "federation.clients_per_round=2",
                          f"run_dir={run_dir}"])
    return run_experiment(cfg)


def test_client_level_dp_accounts_every_participation_and_its_noise_is_seeded(smoke_overrides, tmp_path):
    # client_adaptive: Flower's clipping mod at each hospital, the adaptive wrapper, FedAvgM after the noise
    summary = client_level_run(smoke_overrides, tmp_path / "first")
    lines = read_metric_lines(tmp_path / "first")
    participations: dict[str, int] = {}
    for line in lines:
        for hospital, metrics in line["train"].items():
            participations[hospital] = participations.get(hospital, 0) + 1
            independent = RdpAccountant()  # no amplification: the seeded sample is public
            independent.compose(dp_accounting.GaussianDpEvent(0.8), participations[hospital])
            assert metrics["client-dp-epsilon"] == pytest.approx(independent.get_epsilon(1e-5), rel=0.01)
    assert summary["privacy"]["max_client_dp_epsilon"] == max(
        line["train"][h]["client-dp-epsilon"] for line in lines for h in line["train"])
    again = client_level_run(smoke_overrides, tmp_path / "second")
    first, second = (
        load_file(tmp_path / "first" / "heads.safetensors"),
        load_file(tmp_path / "second" / "heads.safetensors"),
    )
    assert all(torch.equal(first[key], second[key]) for key in first)  # the same seed: the same noise
    assert again["i2t_recall@10"] == summary["i2t_recall@10"]


def test_a_resumed_run_carries_each_hospitals_epsilon_over_and_matches_one_that_never_stopped(
    smoke_overrides, tmp_path
):
    common = [
        *smoke_overrides,
        "strategy=fedavgm",
        "strategy.modality_aware=false",
        "privacy=dp_sgd",
        "privacy.sample.target_epsilon=null",
        f"privacy.sample.noise_multiplier={SIGMA}",
    ]
    whole = run_experiment(compose_config([*common, "federation.rounds=3", f"run_dir={tmp_path / 'whole'}"]))
    run_experiment(compose_config([*common, "federation.rounds=2", f"run_dir={tmp_path / 'split'}"]))
    with pytest.raises(ConfigError, match="already holds a finished run"):  # never silently restarted
        run_experiment(compose_config([*common, "federation.rounds=3", f"run_dir={tmp_path / 'split'}"]))
    resumed = run_experiment(
        compose_config([*common, "federation.rounds=3", f"run_dir={tmp_path / 'split'}", "resume=true"])
    )
    lines = read_metric_lines(tmp_path / "split")
    assert [line["round"] for line in lines] == [1, 2, 3]
    # the hospital's ledger came back from its state folder: round 3's ε composes all 3 rounds, not 1
    assert lines[2]["train"]["0"]["dp-steps"] == 6
    assert lines[2]["train"]["0"]["dp-epsilon"] == pytest.approx(independent_epsilon(1.0, SIGMA, 6, 1 / 640))
    assert resumed["privacy"] == whole["privacy"]
    first, second = (
        load_file(tmp_path / "whole" / "heads.safetensors"),
        load_file(tmp_path / "split" / "heads.safetensors"),
    )
    assert all(torch.equal(first[key], second[key]) for key in first)  # momentum and seeds carried over too


def test_privacy_sweep_writes_its_table_and_plot_and_reuses_finished_cells(smoke_overrides, tmp_path):
    from fedmm.cli import main as cli_main

    out = tmp_path / "sweep"
    arguments = ["privacy-sweep", "--epsilons", "8,inf", "--seeds", "0,1", "--out", str(out), *smoke_overrides]
    assert cli_main(arguments) == 0
    with open(out / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["cell"], row["seeds"]) for row in rows] == [("eps-8", "2"), ("eps-inf", "2"), ("no-dp-in-batch", "2")]
    cells = out / "cells"
    eps_8 = json.loads((cells / "privacy=dp_sgd+privacy.sample.target_epsilon=8.0,seed=0" / "summary.json")
                       .read_text())
    assert 7.98 <= eps_8["privacy"]["max_dp_epsilon"] <= 8.0  # the whole planned run spends the target
    noise_free = cells / "train.objective=reference_bank,seed=1" / "summary.json"
    assert "privacy" not in json.loads(noise_free.read_text())  # no DP there
    assert rows[0]["i2t_recall@10_diff"] != "" and rows[1]["i2t_recall@10_diff"] == ""  # tested against eps-inf
    assert "| eps-inf (target ε ∞) | 2 |" in (out / "table.md").read_text()
    assert (out / "privacy_utility.png").read_bytes()[:4] == b"\x89PNG"
    stamp = noise_free.stat().st_mtime_ns
    assert cli_main(arguments) == 0
    assert noise_free.stat().st_mtime_ns == stamp  # reused, not rerun
    assert cli_main(["privacy-sweep", "--epsilons", "0", "--out", str(out), *smoke_overrides]) == 2  # named error
