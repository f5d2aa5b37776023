"""`fedmm sweep` and `fedmm report`: axes and cells, the fairness columns, and a two-cell sweep end to end
that is run twice (the second run reuses the first's cells) and turned into a report."""

import csv
import json

import pytest

from fedmm.config import ConfigError
from fedmm.studies.sweep import Cell, cell_row, hospital_auroc, make_cells, parse_sweep


def test_sweep_axes_cells_and_variants():
    fixed, axes = parse_sweep(["scenario=mix", "seed=0,1", "scenario.hospital_mix.unimodal=0,0.5"],
                              ["strategy=fedavg", "strategy=fedavg strategy.modality_aware=false  missing=prototype"])
    assert fixed == ["scenario=mix"]
    assert axes == {"variant": ["strategy=fedavg", "strategy=fedavg strategy.modality_aware=false missing=prototype"],
                    "seed": ["0", "1"], "scenario.hospital_mix.unimodal": ["0", "0.5"]}
    cells = make_cells(fixed, axes)
    assert len(cells) == 8 and len({cell.name for cell in cells}) == 8
    assert cells[-1] == Cell(
        "strategy=fedavg+strategy.modality_aware=false+missing=prototype,seed=1,scenario.hospital_mix.unimodal=0.5",
        {
            "variant": "strategy=fedavg strategy.modality_aware=false missing=prototype",
            "seed": "1",
            "scenario.hospital_mix.unimodal": "0.5",
        },
        [
            "scenario=mix",
            "strategy=fedavg",
            "strategy.modality_aware=false",
            "missing=prototype",
            "seed=1",
            "scenario.hospital_mix.unimodal=0.5",
        ],
    )


@pytest.mark.parametrize(
    "overrides, variants, message",
    [
        (["seed=0,1", "seed=2,3"], [], "seed is swept twice"),
        ([], ["strategy=fedavg,feddistill"], "a variant holds single values"),
    ],
)
def test_bad_sweeps_are_named(overrides, variants, message):
    with pytest.raises(ConfigError, match=message):
        parse_sweep(overrides, variants)


def test_seeds_become_the_last_axis_unless_the_overrides_set_them():
    from fedmm.studies.sweep import DEFAULT_SEEDS, with_seeds

    assert with_seeds(["strategy=fedavg,fedprox"]) == ["strategy=fedavg,fedprox", f"seed={DEFAULT_SEEDS}"]
    assert with_seeds(["a=1"], "3, 5") == ["a=1", "seed=3,5"]
    assert with_seeds(["seed=4"]) == ["seed=4"]  # given as an override: used as given
    with pytest.raises(ConfigError, match="given twice"):
        with_seeds(["seed=4"], "0,1")
    for bad in ("0,0", "a,b", "-1", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            with_seeds([], bad)


def test_hospital_auroc_takes_the_model_and_modality_the_hospital_uses():
    assert hospital_auroc({"zeroshot_auroc_macro": 0.6, "report_zeroshot_auroc_macro": 0.7}) == 0.6
    assert hospital_auroc({"report_zeroshot_auroc_macro": 0.7}) == 0.7  # a report-only hospital
    assert hospital_auroc({"zeroshot_auroc_macro": 0.6, "personal_report_zeroshot_auroc_macro": 0.8}) == 0.8
    assert hospital_auroc({}) is None


def test_cell_row_groups_worst_and_spread_by_hand():
    summary = {
        "i2t_recall@10": 0.2,
        "hospitals": {
            "0": {"group": "paired", "zeroshot_auroc_macro": 0.8},
            "1": {"group": "paired", "zeroshot_auroc_macro": 0.6},
            "2": {"group": "image_only", "zeroshot_auroc_macro": 0.5},
            "3": {"group": "report_only", "report_zeroshot_auroc_macro": 0.7},
        },
    }
    row = cell_row(Cell("seed=0", {"seed": "0"}, []), summary)
    assert row["i2t_recall@10"] == 0.2 and row["seed"] == "0"
    assert row["paired_hospital_auroc"] == pytest.approx(0.7)
    assert (row["image_only_hospital_auroc"], row["report_only_hospital_auroc"]) == (0.5, 0.7)
    assert row["mean_hospital_auroc"] == pytest.approx(0.65)
    assert (row["worst_hospital_auroc"], row["worst_hospital"], row["worst_hospital_group"]) == (0.5, 2, "image_only")
    assert row["spread_hospital_auroc"] == pytest.approx(0.3)


@pytest.mark.slow
def test_two_cell_sweep_runs_once_then_reuses_its_cells_and_reports(smoke_overrides, tmp_path):
    from fedmm.cli import main as cli_main
    from fedmm.studies.report import write_report
    from fedmm.studies.sweep import run_sweep, with_seeds

    out = tmp_path / "sweep"
    overrides = [
        *smoke_overrides,
        "scenario=mix",
        "scenario.profiles=[]",
        "scenario.num_hospitals=3",
        "scenario.hospital_mix.unimodal=0.34",
        "strategy=fedavg",
        "missing=ignore,prototype",
    ]
    assert cli_main(["sweep", "--out", str(out), "--seeds", "0,1", *overrides]) == 0
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["missing"], row["seed"]) for row in rows] == [("ignore", "0"), ("ignore", "1"), ("prototype", "0"),
                                                              ("prototype", "1")]
    for row in rows:  # the table holds what each cell's summary says
        summary = json.loads((out / "cells" / row["cell"] / "summary.json").read_text())
        assert float(row["i2t_recall@10"]) == summary["i2t_recall@10"]
    with open(out / "hospitals.csv", newline="") as handle:
        assert [row["group"] for row in csv.DictReader(handle)][:3] == ["paired", "paired", "image_only"]
    first = (out / "results.csv").read_text()

    def must_not_run(cfg):
        raise AssertionError(f"cell {cfg.run_dir} was run again")

    run_sweep(with_seeds(overrides, "0,1"), out, must_not_run, log=lambda line: None)
    assert (out / "results.csv").read_text() == first
    with pytest.raises(ConfigError, match="holds a finished run of another configuration"):
        run_sweep(with_seeds([*overrides, "federation.rounds=3"], "0,1"), out, must_not_run, log=lambda line: None)

    report = write_report(out).read_text()
    assert "| missing=ignore |" in report and "| missing=prototype |" in report
    assert "seeds per point: 2" in report and "95% Student-t" in report
    for figure in (
        "i2t_recall_at_10_vs_x.png",
        "zeroshot_auroc_macro_vs_x.png",
        "hospital_heatmap.png",
        "group_bars.png",
    ):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    assert cli_main(["report", str(out), "--metric", "nope"]) == 2
    assert cli_main(["report", str(out), "--baseline", "missing=nope"]) == 2
    assert "significantly above/below `missing=ignore`" in write_report(out, baseline="missing=ignore").read_text()
    # paired differences need a baseline and an x: this sweep's only axes are the variant and the seed
    assert cli_main(["report", str(out), "--differences", "0,1"]) == 2
    assert cli_main(["report", str(out), "--baseline", "missing=ignore", "--differences", "0,1"]) == 2


def test_report_marks_variants_that_differ_from_the_baseline_paired_by_seed():
    from fedmm.studies.report import metric_table

    def cells(variant, values):
        return [{"variant": variant, "x": 0.5, "seed": float(seed), "m": value} for seed, value in enumerate(values)]

    rows = [*cells("base", [0.10, 0.20, 0.30]),
            *cells("above", [0.15, 0.26, 0.34]),  # +0.05 ± 0.01 in every seed: significant although the spread is wide
            *cells("level", [0.12, 0.17, 0.31])]  # +0.02, -0.03, +0.01: not significant
    lines = metric_table(rows, ["base", "above", "level"], [0.5], "m", "x", baseline="base").splitlines()
    assert lines[2] == "| base | 0.200 ± 0.248 |"
    assert lines[3].endswith(" ↑ |") and "↑" not in lines[4] and "↓" not in lines[4]
    assert "↑" not in metric_table(rows, ["base", "above"], [0.5], "m", "x")  # no baseline, no marks


def test_difference_tables_pair_by_seed_along_x_and_against_the_baseline(tmp_path):
    from fedmm.studies.report import difference_tables

    (tmp_path / "sweep.json").write_text(json.dumps({"fixed": [], "axes": {
        "strategy": ["fedavg", "local"], "share": ["0", "0.5"], "seed": ["0", "1", "2"]}}))
    values = {("fedavg", "0"): [0.5, 0.625, 0.75], ("fedavg", "0.5"): [0.375, 0.5, 0.6875],  # -1/8, -1/8, -1/16
              ("local", "0"): [0.25, 0.375, 0.5], ("local", "0.5"): [0.25, 0.375, 0.5]}  # level along x
    with open(tmp_path / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", "strategy", "share", "seed", "m"])
        for (strategy, share), per_seed in values.items():
            for seed, value in enumerate(per_seed):
                writer.writerow([f"{strategy}-{share}-{seed}", strategy, share, seed, value])
    lines = difference_tables(tmp_path, "share", "0,0.5", "strategy=fedavg", ["m"]).splitlines()
    assert lines[:4] == ["Along x: share = 0.5 minus 0, paired by seed", "",
                         "| variant | metric | difference (95% t-interval) | p |", "|---|---|---|---|"]
    # -0.104 ± t(0.975, 2) * sd / sqrt(3) = 4.303 * 0.0361 / 1.732; t = -5.0 on 2 degrees of freedom: p = 0.038
    assert lines[4] == "| strategy=fedavg | m | -0.104 ± 0.090 | 0.0377 |"
    assert lines[5] == "| strategy=local | m | 0.000 ± 0.000 | – |"  # the same in every seed: no p-value
    assert lines[-1] == "| strategy=local | m | -0.250 ± 0.000 | – | -0.146 ± 0.090 | 0.0198 |"  # t = -7.0
    assert difference_tables(tmp_path, "share", "0,0.5", None, ["m"]).splitlines() == lines[:6]  # no baseline
    for bad, named in ((dict(between="0,0.25"), "this sweep has 0, 0.5"), (dict(between="0"), "FROM,TO"),
                       (dict(x="nope"), "--x 'nope'"), (dict(baseline="strategy=x"), "its variants"),
                       (dict(metrics=["auroc"]), "--metric 'auroc'")):
        arguments = dict(x="share", between="0,0.5", baseline="strategy=fedavg", metrics=["m"]) | bad
        with pytest.raises(ConfigError, match=named):
            difference_tables(tmp_path, **arguments)
