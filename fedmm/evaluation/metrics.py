"""Every metric fedmm reports, in one registry: its name (the key in metrics.jsonl and summary.json), a short
label for tables and plots, its direction, and its chance level and ceiling where they exist.

Tables, plots and reports read names and labels from here; `evaluate_split` computes the values.
Prefixed forms are the same metric elsewhere: `personal_X` is X of a hospital's own model (personalized
strategies), `report_zeroshot_auroc_macro` the report side of the zero-shot question.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedmm.evaluation.retrieval import chance_finding_precision, oracle_recall_at_k

KS = (1, 5, 10)  # k of recall@k and precision@k
PERSONAL_PREFIX = "personal_"  # a hospital's own model (FedPer/FedRep/Ditto/finetune/distillation)
CHANCE_PREFIX = "chance_"  # a metric's chance level on the split it was measured on (`evaluate_split`)

Bound = Callable[[torch.Tensor], float]  # (N, F) labels of the evaluated split -> a reference value


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # short, for table headers and legends
    description: str
    higher_is_better: bool = True
    chance: Bound | None = None  # a random model's expected value on these labels
    ceiling: Bound | None = None  # the best value these labels allow (label oracle); None: 1.0 or not known


def _recall(direction: str, k: int) -> Metric:
    what = "image→report" if direction == "i2t" else "report→image"
    return Metric(f"{direction}_recall@{k}", f"{direction} R@{k}",
                  f"{what} retrieval: share of queries whose own pair is among the top {k}",
                  chance=lambda labels: min(1.0, k / len(labels)),
                  ceiling=lambda labels: oracle_recall_at_k(labels, (k,))[k])


def _precision(direction: str, k: int) -> Metric:
    return Metric(f"{direction}_precision@{k}", f"{direction} P@{k}",
                  f"share of the top {k} retrieved items with the query's finding set (needs every label)",
                  chance=chance_finding_precision)


METRICS: dict[str, Metric] = {metric.name: metric for metric in (
    *(_recall(direction, k) for direction in ("i2t", "t2i") for k in KS),
    *(_precision(direction, k) for direction in ("i2t", "t2i") for k in KS),
    Metric("zeroshot_auroc_macro", "0-shot AUROC",
           "images scored against positive/negative finding prompts; AUROC macro-averaged over findings",
           chance=lambda labels: 0.5),
    Metric("report_zeroshot_auroc_macro", "report 0-shot AUROC",
           "the same for report embeddings (the report-only hospitals' side)", chance=lambda labels: 0.5),
)}

HEADLINE = "i2t_recall@10"  # the one number progress lines print
RUN_TABLE = ("i2t_recall@1", "i2t_recall@10", "t2i_recall@10", "i2t_precision@5", "zeroshot_auroc_macro")
GROUP_TABLE = ("zeroshot_auroc_macro", "report_zeroshot_auroc_macro", "i2t_recall@10", "personal_zeroshot_auroc_macro")
GLOBAL_CURVES = ("i2t_recall@10", "t2i_recall@10", "i2t_precision@5", "zeroshot_auroc_macro")
GROUP_CURVES = ("zeroshot_auroc_macro", "report_zeroshot_auroc_macro", "i2t_recall@10",
                "personal_zeroshot_auroc_macro", "personal_i2t_recall@10")
REPORT_DEFAULT = ("i2t_recall@10", "zeroshot_auroc_macro")  # fedmm report's figures without --metric


def metric(name: str) -> Metric:
    """The registered metric `name` (a `personal_` prefix is the same metric of a hospital's own model)."""
    base = name.removeprefix(PERSONAL_PREFIX)
    if base not in METRICS:
        raise KeyError(f"unknown metric {name!r}; registered: {sorted(METRICS)}")
    return METRICS[base]


def label(name: str) -> str:
    """The short label of `name`; unregistered names (per-finding AUROCs, counts) label themselves."""
    base = name.removeprefix(PERSONAL_PREFIX)
    if base not in METRICS:
        return name
    return ("own model " if name.startswith(PERSONAL_PREFIX) else "") + METRICS[base].label


def reference_values(labels: torch.Tensor) -> dict[str, dict[str, float]]:
    """{"chance": {name: value}, "ceiling": {name: value}} for the registered metrics that define them."""
    return {kind: {metric.name: getattr(metric, kind)(labels) for metric in METRICS.values()
                   if getattr(metric, kind) is not None} for kind in ("ceiling", "chance")}
