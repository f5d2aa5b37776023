"""Sweeps: every combination of the swept overrides, one run directory per cell, one results table.

An override with a comma-separated value is an axis, in Hydra's sweep syntax (`seed=0,1,2`,
`strategy=fedavg,feddistill`, `scenario.hospital_mix.unimodal=0,0.25,0.5`, `range(0,3)`); the others
apply to every cell. Every sweep runs several seeds: `seeds` (default `DEFAULT_SEEDS`) becomes the last
axis unless the overrides set `seed` themselves (`fedmm.studies.stats` turns them into intervals).
`variants` adds one more axis, `variant`, whose values are sets of overrides that go together
(`strategy=feddistill`, `strategy=fedavg missing=prototype`), for comparisons that are not a full
cartesian product. Layout of `out`:
    sweep.json            the fixed overrides, the axes and the cells of the last invocation
    cells/<k=v,k=v>/      one run directory per cell (Hydra's override_dirname)
    results.csv           one row per cell: its axis values, global, per-group and fairness metrics
    hospitals.csv         one row per (cell, hospital): its group and the metrics of the model it uses
A finished cell is reused when its saved config equals the one the sweep composes now (else the sweep
stops and says so); an unfinished one is resumed from its checkpoint where the strategy allows it, or
run again.
"""

import dataclasses
import functools
import itertools
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from fedmm.compose import compose_config, upgrade_saved_config
from fedmm.config import ConfigError, ExperimentConfig, config_to_dict
from fedmm.data.modality import GROUPS
from fedmm.federation import resolve_hospitals, site_hospital_count
from fedmm.strategies import strategy_spec
from fedmm.studies.tables import RunFn, write_csv
from fedmm.validation import validate_config

GLOBAL_METRICS = ("i2t_recall@1", "i2t_recall@10", "t2i_recall@10", "i2t_precision@5", "zeroshot_auroc_macro",
                  "report_zeroshot_auroc_macro")
HOSPITAL_METRIC = "hospital_auroc"  # see `hospital_auroc`
VARIANT_AXIS = "variant"
SEED_AXIS = "seed"
DEFAULT_SEEDS = "0,1,2"  # three replicates: the fewest that give an interval with some power (t(0.975, 2) = 4.30)
RUN_ONLY_KEYS = (
    "run_dir",
    "resume",
    "cache_dir",
)  # may differ between a cell's saved config and now; no effect on results


@dataclass(frozen=True)
class Cell:
    name: str  # the directory name: its axis overrides joined by commas
    values: dict[str, str]  # axis key -> value
    overrides: list[str]  # fixed overrides, then the axis ones


def parse_sweep(overrides: Sequence[str], variants: Sequence[str] = ()) -> tuple[list[str], dict[str, list[str]]]:
    """(fixed overrides, axes): an axis is an override whose value is a sweep (`a,b`, `range(...)`);
    `variants` (each a space-separated set of overrides) become the `variant` axis."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
        for variant in variants:
            if any(o.is_sweep_override() for o in parser.parse_overrides(variant.split())):
                raise ConfigError(f"--variant {variant!r}: a variant holds single values; sweep outside it")
    except ConfigError:
        raise
    except Exception as error:  # Hydra's OverrideParseException names the bad override
        raise ConfigError(f"cannot parse the sweep's overrides: {error}") from error
    fixed: list[str] = []
    axes: dict[str, list[str]] = {VARIANT_AXIS: [" ".join(v.split()) for v in variants]} if variants else {}
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            key = override.get_key_element()
            if key in axes:
                raise ConfigError(f"{key} is swept twice; give its values once, comma-separated")
            axes[key] = list(override.sweep_string_iterator())
        else:
            fixed.append(text)
    return fixed, axes


def with_seeds(overrides: Sequence[str], seeds: str | None = None) -> list[str]:
    """`overrides` with the seed axis appended: `seeds` (comma-separated), or `DEFAULT_SEEDS` when neither is
    given. Setting `seed` in the overrides and in `seeds` both is refused (which one would win is unclear)."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
    except Exception as error:  # Hydra's OverrideParseException names the bad override
        raise ConfigError(f"cannot parse the overrides: {error}") from error
    if any(override.get_key_element() == SEED_AXIS for override in parsed):
        if seeds is not None:
            raise ConfigError("the seeds are given twice (--seeds and a seed= override); keep one")
        return list(overrides)
    chosen = DEFAULT_SEEDS if seeds is None else seeds
    values = [value.strip() for value in chosen.split(",")]
    if not values or not all(value.isdigit() for value in values) or len(set(values)) != len(values):
        raise ConfigError(f"--seeds={chosen!r}: give distinct non-negative integers, comma-separated (e.g. 0,1,2)")
    return [*overrides, f"{SEED_AXIS}={','.join(values)}"]


def make_cells(fixed: Sequence[str], axes: dict[str, list[str]]) -> list[Cell]:
    """The cartesian product of the axes, in command-line order (the last axis varies fastest)."""
    cells = []
    for values in itertools.product(*axes.values()):
        chosen = dict(zip(axes, values))
        names = [value.replace(" ", "+") if key == VARIANT_AXIS else f"{key}={value}" for key, value in chosen.items()]
        swept = [
            part
            for key, value in chosen.items()
            for part in (value.split() if key == VARIANT_AXIS else [f"{key}={value}"])
        ]
        cells.append(Cell(",".join(names).replace("/", "-") or "single", chosen, [*fixed, *swept]))
    return cells


def compose_cells(cells: Sequence[Cell], out: Path) -> list[ExperimentConfig]:
    """Every cell's validated config, before the first run starts; a bad cell is named."""
    configs, count = [], functools.cache(site_hospital_count)  # a natural split's manifest is read once, not per cell
    for cell in cells:
        try:
            cfg = compose_config([*cell.overrides, f"run_dir='{out / 'cells' / cell.name}'"])  # quoted: = and ,
            cfg = resolve_hospitals(cfg, count)  # scenario=natural: one hospital per site, as a run resolves it
            validate_config(cfg)
        except ConfigError as error:
            raise ConfigError(f"sweep cell {cell.name}: {error}") from error
        configs.append(cfg)
    return configs


def run_grid(
    overrides: Sequence[str], out: Path, run: RunFn, log: Callable[[str], None] = print, variants: Sequence[str] = ()
) -> tuple[dict[str, list[str]], list[tuple[Cell, dict[str, Any]]]]:
    """Run (or reuse) every cell under `out` and write sweep.json; returns the axes and each cell's summary.
    Every cell's config is composed and validated before the first run starts."""
    fixed, axes = parse_sweep(overrides, variants)
    cells = make_cells(fixed, axes)
    configs = compose_cells(cells, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(
        json.dumps({"fixed": fixed, "axes": axes, "cells": [cell.name for cell in cells]}, indent=2)
    )
    finished = []
    for index, (cell, cfg) in enumerate(zip(cells, configs), start=1):
        log(f"({index}/{len(cells)}) {cell.name}")  # parentheses: Rich reads [..] as markup
        finished.append((cell, run_or_reuse(cfg, run, log)))
    return axes, finished


def run_sweep(
    overrides: Sequence[str], out: Path, run: RunFn, log: Callable[[str], None] = print, variants: Sequence[str] = ()
) -> list[dict]:
    """Run (or reuse) every cell under `out`; write sweep.json, results.csv and hospitals.csv."""
    axes, finished = run_grid(overrides, out, run, log, variants)
    rows = [cell_row(cell, summary) for cell, summary in finished]
    hospital_rows = [{"cell": cell.name, **cell.values, **row} for cell, summary in finished
                     for row in hospital_table(summary)]
    write_csv(rows, out / "results.csv", ["cell", *axes, *RESULT_COLUMNS])
    write_csv(hospital_rows, out / "hospitals.csv", ["cell", *axes, *HOSPITAL_COLUMNS])
    return rows


def run_or_reuse(cfg: ExperimentConfig, run: RunFn, log: Callable[[str], None]) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    if (run_dir / "summary.json").exists():
        saved = upgrade_saved_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
        if _comparable(saved) != _comparable(config_to_dict(cfg)):
            raise ConfigError(
                f"{run_dir} holds a finished run of another configuration (the sweep's fixed "
                "overrides changed?); sweep into another --out, or remove that cell"
            )
        log(f"  reusing {run_dir / 'summary.json'}")
        return json.loads((run_dir / "summary.json").read_text())
    if (run_dir / "checkpoint.json").exists() and strategy_spec(cfg.strategy.name).resumable:
        log(f"  resuming the unfinished cell from {run_dir / 'checkpoint.json'}")
        return run(dataclasses.replace(cfg, resume=True))
    if run_dir.exists():  # started but nothing to continue from: its partial outputs would be overwritten anyway
        log(f"  running the unfinished cell again (no checkpoint): {run_dir}")
        shutil.rmtree(run_dir)
    return run(cfg)


def _comparable(config: dict[str, Any]) -> str:
    return json.dumps({key: value for key, value in config.items() if key not in RUN_ONLY_KEYS}, sort_keys=True)


def hospital_auroc(metrics: dict[str, Any]) -> float | None:
    """0-shot AUROC on a hospital's local test split, of the model it would use (its own model under a
    personalized strategy, else the global one), for the modality it holds (images where it has any, else
    reports): one number every hospital has, so the worst hospital and the spread compare everyone."""
    for prefix in ("personal_", ""):
        for name in ("zeroshot_auroc_macro", "report_zeroshot_auroc_macro"):
            if metrics.get(prefix + name) is not None:
                return metrics[prefix + name]
    return None


HOSPITAL_COLUMNS = (
    "hospital",
    "group",
    "num_paired",
    "num_image",
    "num_report",
    HOSPITAL_METRIC,
    "i2t_recall@10",
    "personal_i2t_recall@10",
)


def hospital_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "hospital": int(hospital),
            "group": metrics.get("group"),
            **{name: metrics.get(name) for name in ("num_paired", "num_image", "num_report")},
            HOSPITAL_METRIC: hospital_auroc(metrics),
            "i2t_recall@10": metrics.get("i2t_recall@10"),
            "personal_i2t_recall@10": metrics.get("personal_i2t_recall@10"),
        }
        for hospital, metrics in summary.get("hospitals", {}).items()
    ]


RESULT_COLUMNS = (
    *GLOBAL_METRICS,
    *(f"{group}_{HOSPITAL_METRIC}" for group in GROUPS),
    f"mean_{HOSPITAL_METRIC}",
    f"worst_{HOSPITAL_METRIC}",
    "worst_hospital",
    "worst_hospital_group",
    f"spread_{HOSPITAL_METRIC}",
    "evaluated_round",
    "stopped",
    "wall_time_s",
)


def cell_row(cell: Cell, summary: dict[str, Any]) -> dict[str, Any]:
    """Global metrics, each modality group's mean hospital AUROC, and the fairness measures: the worst
    hospital (its value, id and group) and the spread (best - worst) between hospitals."""
    hospitals = [row for row in hospital_table(summary) if row[HOSPITAL_METRIC] is not None]
    row: dict[str, Any] = {"cell": cell.name, **cell.values, **{name: summary.get(name) for name in GLOBAL_METRICS}}
    for group in GROUPS:
        values = [h[HOSPITAL_METRIC] for h in hospitals if h["group"] == group]
        row[f"{group}_{HOSPITAL_METRIC}"] = sum(values) / len(values) if values else None
    values = [h[HOSPITAL_METRIC] for h in hospitals]
    worst = min(hospitals, key=lambda h: h[HOSPITAL_METRIC]) if hospitals else None
    row |= {
        f"mean_{HOSPITAL_METRIC}": sum(values) / len(values) if values else None,
        f"worst_{HOSPITAL_METRIC}": worst[HOSPITAL_METRIC] if worst else None,
        "worst_hospital": worst["hospital"] if worst else None,
        "worst_hospital_group": worst["group"] if worst else None,
        f"spread_{HOSPITAL_METRIC}": max(values) - min(values) if values else None,
        "evaluated_round": summary.get("evaluated_round"),
        "stopped": summary.get("stopped"),
        "wall_time_s": summary.get("wall_time_s"),
    }
    return {key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in row.items()}
