"""The dropout table: FedAvg and its modality-aware form on `imbalanced` when sampled hospitals go offline.

    python benchmarks/dropout.py --out outputs/dropout [--update docs/conditions.md] [overrides ...]

Runs `fedmm sweep conditions=dropout conditions.availability.dropout=0,0.2,0.5
strategy.modality_aware=false,true seed=0,1,2` on the default experiment (6 hospitals of `imbalanced`, 20
rounds), reusing finished cells, and prints a markdown table of mean ± sample standard deviation (min–max)
over the seeds: the global model's R@10 and AUROC, the worst hospital's AUROC, the image-only hospitals'
image AUROC and the report-only hospital's report AUROC, next to how many of the 20 rounds the image-only
sites (per site) and the report-only site were offline. Seeds change the partition, the initialization and
who is offline when; the dataset stays the same. `--update FILE` writes the table between the markers
`<!-- benchmarks/dropout.py: begin -->` and `<!-- benchmarks/dropout.py: end -->`.
"""

import argparse
import csv
import json
import statistics
from pathlib import Path

from fedmm.cli import run_with_progress
from fedmm.studies.markdown import update_section
from fedmm.studies.sweep import run_sweep

RATES = ("0", "0.2", "0.5")
FORMS = {"false": "fedavg", "true": "fedavg, modality-aware"}
METRICS = {"i2t_recall@10": "R@10", "zeroshot_auroc_macro": "AUROC", "worst_hospital_auroc": "worst hospital AUROC",
           "image_only_hospital_auroc": "image-only sites' AUROC",
           "report_only_hospital_auroc": "report-only site's AUROC"}


def offline_rounds(run_dir: Path, group: str) -> float:
    """Rounds in which a hospital of `group` was offline, per hospital of that group."""
    summary = json.loads((run_dir / "summary.json").read_text())
    members = {h for h, metrics in summary["hospitals"].items() if metrics["group"] == group}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return sum(len(members & {str(h) for h in line.get("offline", [])}) for line in lines) / len(members)


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def table(rows: list[dict], out: Path, seeds: list[str]) -> str:
    header = ("| strategy | dropout | " + " | ".join(METRICS.values())
              + " | rounds offline: image-only (per site) / report-only |")
    lines = [header, "|---" * (3 + len(METRICS)) + "|"]
    for aware, form in FORMS.items():
        for rate in RATES:
            cell = [r for r in rows if r["strategy.modality_aware"].lower() == aware
                    and float(r["conditions.availability.dropout"]) == float(rate)]
            if len(cell) != len(seeds):
                continue
            values = [spread([float(r[m]) for r in cell]) for m in METRICS]
            image = statistics.mean(offline_rounds(out / "cells" / r["cell"], "image_only") for r in cell)
            report = statistics.mean(offline_rounds(out / "cells" / r["cell"], "report_only") for r in cell)
            lines.append(f"| {form} | {rate} | " + " | ".join(values) + f" | {image:.1f} / {report:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/dropout"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--update", type=Path, help="a markdown file with the table's begin/end markers")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    # the budget its docs table was measured at, before issue 18 (20 rounds, no model selection)
    run_sweep(["federation.rounds=20", "early_stopping.metric=null",
               "conditions=dropout", f"conditions.availability.dropout={','.join(RATES)}",
               f"strategy.modality_aware={','.join(FORMS)}", f"seed={args.seeds}", *args.overrides],
              args.out, run_with_progress)
    with (args.out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    text = (f"mean ± sd (min–max) over seeds {args.seeds}; 20 rounds, every hospital sampled, independent offline "
            "rounds\n\n" + table(rows, args.out, args.seeds.split(",")))
    print(text)
    if args.update:
        update_section(args.update, "benchmarks/dropout.py", text)


if __name__ == "__main__":
    main()
