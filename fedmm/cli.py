"""`fedmm` command line: run an experiment, compare strategies, sweep knobs and report, manage hospital folders,
rehearse a deployment, list the options."""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedmm.compose import CONFIG_DIR, compose_config, load_config_file
from fedmm.config import ConfigError, ExperimentConfig
from fedmm.evaluation import metrics as registry
from fedmm.evaluation.metrics import HEADLINE as HEADLINE_METRIC
from fedmm.simulation import SimulationFailed

console = Console()


SEEDS_HELP = ("comma-separated seeds, each a replicate (partition, initialization, sampling); tables show the mean "
              "and its 95%% t-interval (default 0,1,2; a seed= override instead is used as given)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    parser = argparse.ArgumentParser(
        prog="fedmm", description="Federated multimodal (image + report) learning simulator."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one experiment (Hydra overrides: key=value, group=option)")
    run.add_argument("overrides", nargs="*", help="e.g. strategy=fedavg scenario=balanced federation.rounds=10")
    run.add_argument("--config-file", type=Path, help="rerun a saved run_dir/config.yaml (overrides apply on top)")
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last checkpoint (with its saved config; overrides such as "
        "federation.rounds=30 apply on top)",
    )
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")
    compare = commands.add_parser(
        "compare",
        help="run strategies x scenarios x seeds with the same budget; write tables with 95%% intervals and "
        "significance against a baseline, and comparison.png",
    )
    compare.add_argument("--strategies", default="all", help="comma-separated names, or 'all' (see `fedmm list`)")
    compare.add_argument("--scenarios", default="imbalanced,balanced", help="comma-separated scenario options")
    compare.add_argument("--seeds", default=None, help=SEEDS_HELP)
    compare.add_argument("--baseline", default="fedavg",
                         help="the strategy every other is tested against (paired across seeds); 'none': no test")
    compare.add_argument("--out", type=Path, default=None,
                         help="folder for the runs and tables (default: outputs/compare)")
    compare.add_argument("overrides", nargs="*")
    sweep = commands.add_parser(
        "privacy-sweep",
        help="DP-SGD at each target epsilon for one strategy and scenario; "
        "write table.csv, table.md and privacy_utility.png",
    )
    sweep.add_argument("--epsilons", default="1,2,4,8,inf", help="comma-separated target epsilons; inf: no noise")
    sweep.add_argument("--seeds", default=None, help=SEEDS_HELP)
    sweep.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the runs and tables (default: outputs/privacy-<strategy>-<scenario>-seed<seed>)",
    )
    sweep.add_argument("overrides", nargs="*", help="e.g. strategy=fedavg scenario=balanced federation.rounds=10")
    grid = commands.add_parser(
        "sweep",
        help="every combination of the swept overrides (comma-separated values, "
        "Hydra's syntax) x seeds; reuses finished cells; writes results.csv",
    )
    grid.add_argument("--out", type=Path, required=True, help="folder for the cells and tables")
    grid.add_argument("--seeds", default=None, help=SEEDS_HELP)
    grid.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'K=V [K=V ...]'",
        help="one value of the `variant` axis: overrides that go together, e.g. "
        "'strategy=fedavg missing=prototype' (repeat for each)",
    )
    grid.add_argument(
        "overrides",
        nargs="*",
        help="e.g. scenario=mix scenario.hospital_mix.unimodal=0,0.25,0.5 strategy=fedavg,feddistill seed=0,1,2",
    )
    report = commands.add_parser("report", help="turn a sweep folder into report.md with PNG figures")
    report.add_argument("sweep_dir", type=Path)
    report.add_argument(
        "--metric",
        action="append",
        default=None,
        help="a column of results.csv; repeat for more (default: i2t_recall@10, zeroshot_auroc_macro)",
    )
    report.add_argument("--x", default=None, help="the axis on the x axis (default: the first numeric one but seed)")
    report.add_argument("--baseline", default=None,
                        help="a variant as the report names it: mark the others ↑/↓ where they differ significantly "
                        "from it at the same x (paired by seed)")
    report.add_argument("--differences", default=None, metavar="FROM,TO",
                        help="two values of x: add the paired differences (95%% t-interval, p) of each variant from "
                        "FROM to TO, and of each variant minus --baseline at every x")
    data = commands.add_parser(
        "data", help="hospital folders on disk: validate, export the synthetic federation, import IU X-ray reports"
    )
    data_commands = data.add_subparsers(dest="data_command", required=True)
    validate = data_commands.add_parser(
        "validate", help="check a hospital folder; every problem with its row and column"
    )
    validate.add_argument("folders", type=Path, nargs="+")
    validate.add_argument("--dataset", action="store_true",
                          help="a dataset folder (dataset=folder): an optional site column, every other column a label")
    export = data_commands.add_parser("export-synthetic", help="write the synthetic federation as hospital folders")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("overrides", nargs="*", help="the federation to export, e.g. scenario=balanced seed=1")
    iu = data_commands.add_parser("import-iu", help="IU X-ray (Open-I) report XML -> a report-only hospital folder")
    iu.add_argument("source", type=Path, help="NLMCXR_reports.tgz or a folder of its XML files")
    iu.add_argument("--out", type=Path, required=True)
    iu.add_argument("--test-fraction", type=float, default=0.2, help="share of patients in the test split")
    iu.add_argument("--seed", type=int, default=0)
    iu.add_argument("--images", type=Path, default=None,
                    help="a folder of the IU X-ray PNGs: pair each report with its image (a dataset folder)")
    mimic = data_commands.add_parser("import-mimic", help="MIMIC-CXR-JPG (its published layout) -> a dataset folder")
    mimic.add_argument("root", type=Path, help="the folder with files/ and the mimic-cxr-2.0.0-*.csv tables")
    mimic.add_argument("--out", type=Path, required=True)
    mimic.add_argument("--views", default="PA,AP", help="view positions to take, in order of preference")
    mimic.add_argument("--reports", type=Path, default=None, help="where files/pNN/.../sNNN.txt are (default: root)")
    mimic.add_argument("--test-fraction", type=float, default=0.2, help="without the official split: share of patients")
    mimic.add_argument("--seed", type=int, default=0)
    table = data_commands.add_parser("import-csv", help="a CSV with one row per study -> a dataset folder")
    table.add_argument("csv", type=Path)
    table.add_argument("--out", type=Path, required=True)
    table.add_argument("--patient-col", required=True)
    table.add_argument("--image-col", default=None, help="image paths, relative to the CSV's folder or absolute")
    table.add_argument("--report-col", default=None, help="report text, or paths to .txt files")
    table.add_argument("--site-col", default=None)
    table.add_argument("--label-cols", default="", help="comma-separated label columns (1, 0, empty, -1 = unknown)")
    table.add_argument("--split-col", default=None, help="train | test (val counts as train); default: by patient")
    table.add_argument("--study-col", default=None)
    table.add_argument("--test-fraction", type=float, default=0.2)
    table.add_argument("--seed", type=int, default=0)
    deploy = commands.add_parser(
        "deploy",
        help="run the app on Flower's Deployment Engine on this machine: a SuperLink "
        "and one SuperNode per hospital folder on 127.0.0.1",
    )
    deploy.add_argument(
        "folders",
        type=Path,
        help="a folder of hospital-<id>/ folders and server-test/ (as `fedmm data export-synthetic` writes)",
    )
    deploy.add_argument(
        "--out",
        type=Path,
        default=None,
        help="logs, certificates and the run directory (default: outputs/deploy-<time>)",
    )
    deploy.add_argument("--tls", action="store_true", help="TLS with a local CA and a certificate for 127.0.0.1")
    deploy.add_argument(
        "--auth",
        action="store_true",
        help="SuperNode authentication (with --tls): each node's public key is registered, unknown nodes are refused",
    )
    deploy.add_argument("--secagg", action="store_true",
                        help="SecAgg+: the server sees only the sum of the hospitals' updates (secagg.enabled=true)")
    deploy.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run to finish")
    deploy.add_argument(
        "overrides",
        nargs="*",
        help="the experiment, as for `fedmm run` (e.g. +experiment=smoke); "
        "the same options the folders were exported with",
    )
    commands.add_parser("list", help="list strategies, scenarios, encoders and datasets")
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides written after an option (`fedmm deploy DIR --out X +experiment=smoke`) are overrides too
        if not hasattr(args, "overrides") or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        if args.command == "list":
            return list_options()
        if args.command == "run":
            if args.resume:
                cfg = load_config_file(
                    args.resume / "config.yaml", [*args.overrides, f"run_dir={args.resume}", "resume=true"]
                )
            elif args.config_file:
                cfg = load_config_file(args.config_file, args.overrides)
            else:
                cfg = compose_config(args.overrides)
            from fedmm.federation import resolve_hospitals

            summary = run_with_progress(resolve_hospitals(cfg), args.verbose)  # natural: one hospital per site
            print_summary(summary)
            return 0
        if args.command == "data":
            return data_command(args)
        if args.command == "deploy":
            overrides = [*args.overrides, *(["secagg.enabled=true"] if args.secagg else [])]
            return deploy_locally(args.folders, overrides, args.out, args.tls, args.auth, args.timeout)
        if args.command == "sweep":
            return sweep_knobs(args.overrides, args.out, args.variant, args.seeds)
        if args.command == "report":
            from fedmm.studies.report import DEFAULT_METRICS, write_report

            path = write_report(args.sweep_dir, args.metric or DEFAULT_METRICS, args.x, args.baseline, args.differences)
            console.print(f"written: {path}")
            return 0
        if args.command == "privacy-sweep":
            return sweep_privacy(args.epsilons, args.overrides, args.out, args.seeds)
        return compare_strategies(args.strategies.split(","), args.scenarios.split(","), args.overrides, args.out,
                                  args.seeds, None if args.baseline == "none" else args.baseline)
    except ConfigError as error:
        console.print(f"[bold red]configuration error:[/] {error}")
        return 2
    except SimulationFailed as error:
        console.print(f"[bold red]simulation failed:[/] {error}")
        return 1


def run_with_progress(cfg: ExperimentConfig, verbose: bool = False) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedmm.experiment import run_experiment

    console.print(
        f"[bold]fedmm[/] {cfg.strategy.name} on {cfg.scenario.name} "
        f"({cfg.scenario.num_hospitals} hospitals, {cfg.federation.rounds} rounds, seed {cfg.seed})"
    )
    with Progress(
        TextColumn("round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[headline]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("rounds", total=cfg.federation.rounds, headline="", start=False)

        def on_round(server_round: int, line: dict[str, Any]) -> None:
            progress.start_task(task)
            headline = progress.tasks[task].fields["headline"]
            if "global" in line and HEADLINE_METRIC in line["global"]:
                headline = f"{HEADLINE_METRIC} {line['global'][HEADLINE_METRIC]:.3f}"
            progress.update(task, completed=server_round, headline=headline)

        return run_experiment(cfg, on_round=on_round, progress=True, verbose=verbose)


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"{summary['strategy']} on {summary['scenario']} — round {summary['evaluated_round']}")
    table.add_column("where")
    for metric in registry.RUN_TABLE:
        table.add_column(registry.label(metric), justify="right")
    table.add_row("global test", *(_fmt(summary.get(m)) for m in registry.RUN_TABLE))
    table.add_row("label oracle", *(_fmt(summary["ceiling"].get(m)) for m in registry.RUN_TABLE))
    table.add_row("chance", *(_fmt(summary["chance"].get(m)) for m in registry.RUN_TABLE))
    console.print(table)
    hospitals = Table(title="local test split of each hospital (global model, and its own model where it has one)")
    hospitals.add_column("hospital")
    hospitals.add_column("group")
    hospitals.add_column("pairs", justify="right")
    for metric in registry.GROUP_TABLE:
        hospitals.add_column(registry.label(metric), justify="right")
    hospitals.add_column(f"{registry.label(registry.HEADLINE)} chance", justify="right")
    sites = summary.get("hospital_sites", {})  # scenario=natural: "0 (north)"
    chance = registry.CHANCE_PREFIX + registry.HEADLINE
    for hospital, metrics in summary["hospitals"].items():
        name = f"{hospital} ({sites[hospital]})" if hospital in sites else hospital
        hospitals.add_row(name, metrics["group"], f"{metrics.get('num_paired', 0):.0f}",
                          *(_fmt(metrics.get(m)) for m in registry.GROUP_TABLE), _fmt(metrics.get(chance)))
    for key in sorted(k for k in summary if k.startswith("group/")) + ["hospital_mean", "hospital_worst"]:
        hospitals.add_row(key, "", "", *(_fmt(summary.get(key, {}).get(m)) for m in registry.GROUP_TABLE), "")
    console.print(hospitals)
    console.print("–: not measured on that split (R@k and P@k need more than k pairs, AUROC both classes of a "
                  "finding); means and worst values are over the hospitals that have the metric")
    if not any(key.startswith("zeroshot_auroc") for key in summary):
        console.print("the dataset has no label columns: retrieval only (no zero-shot AUROC, no finding-aware "
                      "precision); add 1/0 label columns to its manifest to have them")
    selection = summary.get("selection")
    if selection and selection.get("selected_round") is not None:
        console.print(f"round {selection['selected_round']} selected on the validation split ({selection['metric']} "
                      f"{selection['validation_value']:.3f}); its test metrics above, its heads in heads.safetensors")
    console.print(f"run directory: {summary['run_dir']}  ({summary['wall_time_s']} s)")


def deploy_locally(root: Path, overrides: list[str], out: Path | None, tls: bool, auth: bool, timeout_s: float) -> int:
    """`fedmm deploy`: start the local federation, run the app with `flwr run`, wait for the run, check it
    completed, print its metrics, and stop every process started (checked by process group)."""
    from datetime import datetime

    from fedmm.deployment.local import (
        COMPLETED,
        DeploymentError,
        LocalFederation,
        alive_in_groups,
        check_folders,
        find_folders,
        hydra_value,
    )
    from fedmm.validation import validate_config

    try:
        folders = find_folders(root)
        cfg = compose_config([*overrides, f"deployment.server_test_dir={hydra_value(folders.server_test)}"])
        validate_config(cfg)
        check_folders(folders, cfg)  # before any process starts
        out = out or Path("outputs") / f"deploy-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = out.resolve() / "run"
        with LocalFederation(out, folders, tls=tls, node_auth=auth) as federation:
            console.print(
                f"[bold]fedmm deploy[/]: SuperLink on {federation.address} ({'TLS' if tls else 'insecure'}"
                f"{', node authentication' if auth else ''}), {len(folders.hospitals)} SuperNodes; "
                f"logs in {federation.logs}"
            )
            run_id = federation.submit(overrides, run_dir)
            console.print(f"run {run_id} submitted; waiting (rounds appear as the server records them)")
            status, details = federation.wait(run_id, timeout_s, on_poll=RoundPrinter(run_dir / "metrics.jsonl"))
        leftovers = alive_in_groups(federation.process_groups())
    except DeploymentError as error:
        console.print(f"[bold red]deployment error:[/] {error}")
        return 1
    if leftovers:
        console.print(f"[bold red]processes still running after stop:[/] {leftovers}")
        return 1
    console.print(f"run {run_id}: {status}; every process started is stopped")
    if status != COMPLETED:
        console.print(
            f"[bold red]the run did not complete:[/] {details}\nlogs: {federation.logs}; "
            f"finished rounds: {run_dir / 'metrics.jsonl'}"
        )
        return 1
    print_summary(json.loads((run_dir / "summary.json").read_text()) | {"run_dir": str(run_dir)})
    return 0


class RoundPrinter:
    """Prints each round the server records in `metrics.jsonl`, once."""

    def __init__(self, path: Path) -> None:
        self.path, self.printed = path, 0

    def __call__(self) -> None:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        for line in lines[self.printed :]:
            record = json.loads(line)
            headline = record.get("global", {}).get(HEADLINE_METRIC)
            console.print(
                f"  round {record['round']}: hospitals {sorted(int(h) for h in record['train'])} answered"
                + (f", {HEADLINE_METRIC} {headline:.3f}" if headline is not None else "")
            )
        self.printed = len(lines)


def compare_strategies(strategies: list[str], scenarios: list[str], overrides: list[str], out: Path | None,
                       seeds: str | None, baseline: str | None) -> int:
    from fedmm.strategies import strategy_names, strategy_spec
    from fedmm.studies.compare import run_comparison

    compose_config(overrides)  # fails early on a bad override
    strategies = strategy_names() if strategies == ["all"] else strategies
    for strategy in strategies:
        strategy_spec(strategy)  # an unknown name fails here, listing the valid ones
    for scenario in scenarios:
        compose_config([*overrides, f"scenario={scenario}"])  # fails early on an unknown scenario
    if baseline is not None and baseline not in strategies:
        raise ConfigError(f"--baseline {baseline}: not among --strategies {','.join(strategies)}; add it, or "
                          "--baseline none")
    out = out or Path("outputs") / "compare"
    run_comparison(strategies, scenarios, overrides, out, run_with_progress, console.print, seeds, baseline)
    console.print((out / "table.md").read_text())
    console.print(f"written: {out / 'table.csv'}, {out / 'table.md'}, {out / 'comparison.png'}")
    return 0


def data_command(args: argparse.Namespace) -> int:
    if args.data_command == "validate":
        from fedmm.data.hospital_folder import validate_hospital_folder

        failed = 0
        for folder in args.folders:
            if args.dataset:
                from fedmm.data.folder_dataset import SITE_COLUMN

                problems = validate_hospital_folder(folder, labels=None, optional=(SITE_COLUMN,))
            else:
                problems = validate_hospital_folder(folder)
            failed += bool(problems)
            for problem in problems:
                console.print(f"{folder}: {problem}", markup=False)
            console.print(f"{folder}: {len(problems)} problem(s)" if problems else f"{folder}: ok")
        return 1 if failed else 0
    if args.data_command == "export-synthetic":
        from fedmm.data.export import export_synthetic

        folders = export_synthetic(compose_config(args.overrides), args.out)
        console.print(f"written {len(folders)} folders under {args.out}: {', '.join(f.name for f in folders)}")
        return 0
    if args.data_command in ("import-mimic", "import-csv"):
        from fedmm.data import importers

        try:
            if args.data_command == "import-mimic":
                manifest = importers.import_mimic_cxr(args.root, args.out, tuple(args.views.split(",")), args.reports,
                                                      args.test_fraction, args.seed)
            else:
                labels = [name for name in args.label_cols.split(",") if name]
                manifest = importers.import_csv(args.csv, args.out, args.image_col, args.report_col, args.patient_col,
                                                args.site_col, labels, args.split_col, args.study_col,
                                                args.test_fraction, args.seed)
        except importers.SourceError as error:
            raise ConfigError(str(error)) from error
        console.print(f"written {manifest}; check it with `fedmm data validate --dataset {args.out}`, "
                      f"run it with `fedmm run dataset=folder dataset.path={args.out}`")
        return 0
    from fedmm.data.iu_xray import read_iu_reports, write_iu_dataset, write_iu_hospital

    if not 0 < args.test_fraction < 1:
        raise ConfigError(f"--test-fraction={args.test_fraction} must lie in (0, 1)")
    try:
        reports = read_iu_reports(args.source)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from error
    if args.images is not None:
        try:
            manifest, paired = write_iu_dataset(reports, args.out, args.images, args.test_fraction, args.seed)
        except FileNotFoundError as error:
            raise ConfigError(str(error)) from error
        console.print(f"written {manifest}: {paired} studies paired with an image, "
                      f"{sum(1 for r in reports if r.text) - paired} report-only")
        return 0
    folder = write_iu_hospital(reports, args.out, args.test_fraction, args.seed)
    console.print(
        f"written {folder / 'manifest.csv'}: {sum(1 for r in reports if r.text)} report-only studies "
        f"({sum(1 for r in reports if not r.text)} of {len(reports)} without findings or impression left out)"
    )
    return 0


def sweep_knobs(overrides: list[str], out: Path, variants: list[str], seeds: str | None) -> int:
    from fedmm.studies.sweep import run_sweep, with_seeds

    rows = run_sweep(with_seeds(overrides, seeds), out, run_with_progress, log=console.print, variants=variants)
    console.print(
        f"{len(rows)} cells; written: {out / 'results.csv'}, {out / 'hospitals.csv'}; next: fedmm report {out}"
    )
    return 0


def sweep_privacy(epsilons: str, overrides: list[str], out: Path | None, seeds: str | None) -> int:
    from fedmm.studies.privacy_sweep import cell_overrides, run_privacy_sweep
    from fedmm.validation import validate_config

    try:
        targets = [float(value) for value in epsilons.split(",")]
    except ValueError as error:
        raise ConfigError(f"--epsilons={epsilons!r}: {error}; give numbers such as 1,2,4,8,inf") from error
    if any(not target > 0 for target in targets):
        raise ConfigError(f"--epsilons={epsilons!r}: every target epsilon must be > 0 (inf: no noise)")
    base = compose_config(overrides)
    for target in [*targets, None]:  # every cell's config is valid before the first run starts
        validate_config(compose_config([*overrides, *cell_overrides(target)[1]]))
    out = out or Path("outputs") / f"privacy-{base.strategy.name}-{base.scenario.name}"
    run_privacy_sweep(targets, overrides, out, run_with_progress, console.print, seeds)
    console.print((out / "table.md").read_text())
    console.print(f"written: {out / 'table.csv'}, {out / 'table.md'}, {out / 'privacy_utility.png'}")
    return 0


def list_options() -> int:
    from fedmm.aggregation.robust import AGGREGATORS
    from fedmm.clients.adversary import KINDS as ADVERSARY_KINDS
    from fedmm.data.registry import DATASETS
    from fedmm.models.encoders import IMAGE_BACKBONES, POOLINGS
    from fedmm.strategies import all_strategies
    from fedmm.training.missing import MISSING_HANDLERS

    console.print("strategies (strategy=NAME; averaging ones take strategy.modality_aware=true|false):")
    for spec in all_strategies():
        modes = ", ".join(mode.value for mode in sorted(spec.privacy)) or "none"
        console.print(f"  {spec.name:<12} {spec.description} [privacy: {modes}]")
    console.print(f"aggregators (aggregator=NAME, for the averaging strategies): {list(AGGREGATORS)}")
    console.print(f"scenarios: {sorted(p.stem for p in (CONFIG_DIR / 'scenario').glob('*.yaml'))}")
    console.print(f"faulty or malicious hospitals (scenario.adversaries=[{{hospital: 3, kind: KIND, scale: 5}}]): "
                  f"{list(ADVERSARY_KINDS)}")
    console.print(f"simulated conditions (conditions=NAME: offline rounds, training speed, deadline): "
                  f"{sorted(p.stem for p in (CONFIG_DIR / 'conditions').glob('*.yaml'))}")
    console.print(f"missing-modality handlers (missing=): {sorted(MISSING_HANDLERS)}")
    console.print(f"image encoders: {sorted(IMAGE_BACKBONES)} (pooling: {sorted(POOLINGS)})")
    console.print(f"text encoders: {sorted(p.stem for p in (CONFIG_DIR / 'encoders' / 'text').glob('*.yaml'))}")
    console.print(f"datasets: {sorted(DATASETS)}")
    console.print(f"experiments: {sorted(p.stem for p in (CONFIG_DIR / 'experiment').glob('*.yaml'))}")
    return 0


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
