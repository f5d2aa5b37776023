"""Simulated conditions: offline rounds, virtual training time and the round's deadline
(`fedmm.simulation.conditions`), from the schedule up to a whole run."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedmm import protocol as keys
from fedmm.config import AvailabilityConfig, ConditionsConfig, ConfigError
from fedmm.runs.recorder import read_metric_lines
from fedmm.simulation.conditions import Availability, Clock, offline_rounds, training_speed
from fedmm.strategies.roster import RoundLog
from fedmm.training.local import train_heads
from fedmm.validation import validate_config
from tests.helpers import configured, heads, reply, state, strategy, tiny_cfg, tiny_split, user_config


def runs_of(offline: np.ndarray) -> list[int]:
    """Lengths of the maximal runs of offline rounds."""
    lengths, current = [], 0
    for down in offline:
        if down:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths + ([current] if current else [])


@pytest.mark.parametrize("outage_rounds", [1, 4])
def test_a_hospital_is_offline_in_its_share_of_rounds_in_outages_of_k_rounds(outage_rounds):
    cfg = AvailabilityConfig(dropout=0.3, outage_rounds=outage_rounds)
    offline = offline_rounds(cfg, seed=0, hospital=2, rounds=40_000)
    assert abs(offline.mean() - 0.3) < 0.01  # the stationary share of the renewal process
    assert all(length % outage_rounds == 0 for length in runs_of(offline))  # back-to-back outages join up
    if outage_rounds > 1:
        assert min(runs_of(offline)) == outage_rounds


def test_the_schedule_depends_on_seed_and_hospital_only():
    cfg = AvailabilityConfig(dropout=0.4, outage_rounds=2)
    assert np.array_equal(offline_rounds(cfg, 0, 1, 30), offline_rounds(cfg, 0, 1, 100)[:30])  # not the run length
    assert not np.array_equal(offline_rounds(cfg, 0, 1, 100), offline_rounds(cfg, 0, 2, 100))
    assert not np.array_equal(offline_rounds(cfg, 0, 1, 100), offline_rounds(cfg, 1, 1, 100))
    availability = Availability(cfg, num_hospitals=3, seed=0, rounds=100)
    assert availability.offline(5) == [h for h in range(3) if offline_rounds(cfg, 0, h, 100)[4]]
    assert availability.offline(101) == []


def test_beta_rates_scatter_around_the_mean_and_fixed_ones_do_not():
    fixed = Availability(AvailabilityConfig(dropout=0.2), 50, seed=0, rounds=1)
    assert fixed.rates == [0.2] * 50
    beta = Availability(AvailabilityConfig(dropout=0.2, distribution="beta", concentration=10), 400, seed=0, rounds=1)
    assert abs(np.mean(beta.rates) - 0.2) < 0.02  # the Beta's mean
    assert abs(np.var(beta.rates) - 0.2 * 0.8 / 11) < 0.004  # p(1 - p)/(c + 1)


def test_speeds_are_the_median_fixed_or_log_normal_per_hospital():
    compute = configured("conditions.compute", "conditions=stragglers")
    speeds = [training_speed(compute, 0, hospital) for hospital in range(2000)]
    assert abs(np.median(speeds) / compute.samples_per_s - 1) < 0.05
    assert abs(np.std(np.log(speeds)) - compute.sigma) < 0.03
    assert training_speed(dataclasses.replace(compute, distribution="fixed"), 0, 7) == compute.samples_per_s
    assert training_speed(dataclasses.replace(compute, samples_per_s=None), 0, 7) is None


def test_a_clock_admits_the_steps_that_end_by_the_deadline_and_no_more():
    clock = Clock(samples_per_s=10.0, deadline_s=2.5)
    assert [clock.admit(8) for _ in range(4)] == [True, True, True, False]  # 0.8 s each: 2.4 s, then 3.2 > 2.5
    assert clock.elapsed_s == pytest.approx(2.4) and clock.cut
    assert not clock.admit(1)  # after the cut, nothing more fits, even a step that would
    unbounded = Clock(samples_per_s=10.0)
    assert all(unbounded.admit(8) for _ in range(100)) and unbounded.elapsed_s == pytest.approx(80)


def test_local_training_stops_at_the_deadline_and_reports_the_steps_it_took():
    data, cfg = tiny_split(24), tiny_cfg().train  # batch 8, 2 epochs: 6 steps of 8 rows
    full = Clock(samples_per_s=4.0)
    assert train_heads(heads(), data, cfg, seed=0, clock=full).steps == 6
    assert full.elapsed_s == pytest.approx(48 / 4.0)
    cut = Clock(samples_per_s=4.0, deadline_s=9.0)  # 2 s per step: 4 steps fit
    model = heads()
    assert train_heads(model, data, cfg, seed=0, clock=cut).steps == 4 and cut.elapsed_s == pytest.approx(8.0)
    reference = heads()
    train_heads(reference, data, dataclasses.replace(cfg, local_epochs=1), seed=0)  # 3 steps
    torch.manual_seed(0)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def hospital_runtime_with(conditions: list[str], hospital: int = 0):
    from fedmm.clients.runtime import hospital_runtime
    from fedmm.compose import compose_config

    cfg = compose_config(["+experiment=smoke", *conditions])
    return hospital_runtime(cfg, hospital)


@pytest.mark.parametrize("late, expect_update", [("drop", False), ("partial", True)])
def test_a_hospital_past_the_deadline_sends_nothing_or_the_steps_that_fit(late, expect_update, cache_dir):
    from fedmm.clients.runtime import train_round
    from fedmm.training.updates import snapshot

    runtime = hospital_runtime_with([f"cache_dir={cache_dir}", "conditions.compute.samples_per_s=8",
                                     "conditions.compute.distribution=fixed", "conditions.deadline_s=12",
                                     f"conditions.late={late}"])
    received = snapshot(runtime.heads)
    personal = {"kept": torch.ones(2)}
    rows = int(runtime.data.train.paired_mask.sum())  # hospital 0 holds pairs only
    assert rows * runtime.cfg.train.local_epochs / 8 > 12  # its full training would take longer than the deadline
    update, _, metrics = train_round(runtime, received, personal, server_round=1)
    assert metrics[keys.TRAIN_TIME] <= 12
    if expect_update:
        assert metrics[keys.LATE] == 0 and 0 < update.result.steps == metrics[keys.TRAIN_STEPS]
        assert metrics[keys.TRAIN_STEPS] == 12 * 8 // runtime.cfg.train.batch_size  # full batches: 64 rows
        assert any(not torch.equal(update.shared[k], received[k]) for k in received)
    else:
        assert metrics[keys.LATE] == 1 and metrics[keys.TRAIN_STEPS] == 0
        assert all(torch.equal(update.shared[k], received[k]) for k in received) and update.personal is personal


def test_offline_hospitals_are_not_asked_nor_lost_and_late_ones_do_not_contribute(flower_run_identity):
    availability = Availability(AvailabilityConfig(dropout=0.5), 4, seed=0, rounds=10)
    server_round = next(r for r in range(1, 11) if 0 < len(availability.offline(r)) < 4)
    down = availability.offline(server_round)
    fedavg = strategy(num_hospitals=4, num_rounds=10)
    fedavg.roster.availability, fedavg.roster.deadline_s = availability, 5.0
    asked = fedavg.roster.start_round(server_round)
    assert asked == [h for h in range(4) if h not in down]
    on_time, late = asked[0], asked[1:]
    replies = [reply(h, state([1.0 + h], [2.0], 3.0), 10, 10, 10, 10) for h in asked]
    for answer in replies:
        hospital = int(answer.content[keys.METRICS][keys.HOSPITAL_ID])
        answer.content[keys.METRICS][keys.TRAIN_TIME] = 2.0 if hospital == on_time else 5.0
        answer.content[keys.METRICS][keys.LATE] = int(hospital != on_time)
    fedavg.current_arrays = replies[0].content[keys.ARRAYS]
    arrays, _ = fedavg.aggregate_train(server_round, replies)
    log = fedavg.roster.logs[server_round]
    assert fedavg.roster.lost == {} and fedavg.roster.contributors(server_round) == [on_time]
    assert arrays["image_head.0.weight"].numpy().tolist() == [1.0 + on_time]  # the late replies are not averaged
    assert log.late == late and log.time_s == (5.0 if late else 2.0)
    assert log.fields() == {"offline": down, "late": late, "round_time_s": log.time_s}


def test_ideal_conditions_add_nothing_to_a_round():
    assert RoundLog(sampled=[0, 1], train={0: {}, 1: {}}).fields() == {}


@pytest.mark.parametrize("overrides, message", [
    (["conditions.availability.dropout=1.0"], r"dropout=1.0 must lie in \[0, 1\)"),
    (["conditions.availability.distribution=gamma"], "distribution='gamma' is unknown; valid"),
    (["conditions.availability.outage_rounds=0"], "outage_rounds=0 must be >= 1"),
    (["conditions.compute.samples_per_s=0"], "samples_per_s=0.0 must be > 0, or null"),
    (["conditions.deadline_s=5"], "set a training speed, or deadline_s=null"),
    (["conditions=stragglers", "conditions.late=wait"], "late='wait' is unknown"),
    (["conditions=dropout", "strategy=centralized"], "runs without one; use conditions=ideal"),
    (["conditions=stragglers", "strategy=feddistill"], "trains by distillation"),
])
def test_impossible_conditions_name_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(user_config(*overrides))


def test_every_shipped_conditions_file_is_valid():
    for name in ("ideal", "dropout", "stragglers"):
        validate_config(user_config(f"conditions={name}"))
    assert user_config().conditions == ConditionsConfig()  # the default is ideal, as a config saved before


@pytest.mark.slow
def test_a_run_under_dropouts_and_a_deadline_records_who_was_missing(smoke_overrides, tmp_path):
    from fedmm.compose import compose_config
    from fedmm.experiment import run_experiment

    cfg = compose_config([*smoke_overrides, "federation.rounds=4", "conditions=stragglers",
                          "conditions.availability.dropout=0.4", "conditions.compute.samples_per_s=40",
                          "conditions.deadline_s=3", "conditions.late=drop", "early_stopping.metric=i2t_recall@10",
                          "early_stopping.patience=null", f"run_dir={tmp_path}"])
    summary = run_experiment(cfg)
    lines = read_metric_lines(tmp_path)
    availability = Availability(cfg.conditions.availability, 3, cfg.seed, 4)
    clock = 0.0
    for line in lines:
        offline = availability.offline(line["round"])
        assert line.get("offline", []) == offline
        assert sorted(int(h) for h in line["train"]) == [h for h in line["sampled"] if h not in offline]
        assert line["late"] == sorted(int(h) for h, m in line["train"].items() if m[keys.LATE])
        clock += line["round_time_s"]
        assert line["clock_s"] == pytest.approx(clock)
    assert any(line.get("offline") for line in lines) and any(line["late"] for line in lines)
    assert summary["virtual_time_s"] == pytest.approx(clock)
    assert math.isclose(summary["offline_per_round"], sum(len(line.get("offline", [])) for line in lines) / 4)
    assert set(summary["virtual_time_to_final_s"]) >= {"i2t_recall@10"}
    selected = next(line for line in lines if line["round"] == summary["evaluated_round"])
    assert summary["virtual_time_to_selected_s"] == selected["clock_s"]
