"""All metrics of a pair of heads on one split: retrieval, finding-aware precision, zero-shot AUROC.

A metric is reported only where the split can support it: R@k and P@k need more than k candidates (with
k or fewer, R@k is 1 for any model and P@k is its chance level), retrieval needs two pairs, AUROC both
classes of a finding. Next to each registered metric the split's chance level is reported as
`chance_<metric>` (`fedmm.evaluation.metrics`), so a small hospital's figure can be read against it.
"""

import math
from dataclasses import dataclass

import torch

from fedmm.evaluation.metrics import CHANCE_PREFIX, KS, METRICS
from fedmm.evaluation.retrieval import finding_precision_at_k, recall_at_k
from fedmm.evaluation.zeroshot import auroc, prompt_embeddings, zero_shot_scores
from fedmm.federation import SplitTensors
from fedmm.models.features import FeatureSet
from fedmm.models.heads import ContrastiveHeads


@dataclass(frozen=True)
class Prompts:
    features: torch.Tensor  # (P, D_text)
    finding: torch.Tensor  # (P,)
    is_positive: torch.Tensor  # (P,)
    finding_names: tuple[str, ...]  # (F,) the dataset's vocabulary, in label-column order

    @classmethod
    def from_features(cls, features: FeatureSet) -> "Prompts":
        return cls(features.prompt_features, features.prompt_finding, features.prompt_is_positive,
                   features.finding_names)


@torch.inference_mode()
def evaluate_split(heads: ContrastiveHeads, split: SplitTensors, prompts: Prompts) -> dict[str, float]:
    """Metrics that the modalities present in `split` allow; absent ones are left out, not zeroed."""
    heads.eval()
    device = next(heads.parameters()).device

    def embed_images(features: torch.Tensor) -> torch.Tensor:  # on the heads' device, metrics on CPU
        return heads.embed_images(features.to(device)).cpu()

    def embed_reports(features: torch.Tensor) -> torch.Tensor:
        return heads.embed_reports(features.to(device)).cpu()

    metrics: dict[str, float] = {}
    paired, has_image, has_report = split.paired_mask, split.image_mask, split.report_mask
    metrics.update(num_paired=float(paired.sum()), num_image=float(has_image.sum()), num_report=float(has_report.sum()))

    supported_ks = [k for k in KS if paired.sum() > k]  # more candidates than k
    paired_labels = split.labels[paired]
    if paired.sum() >= 2 and supported_ks:
        images = embed_images(split.image_features[paired])
        reports = embed_reports(split.report_features[paired])
        for direction, queries, gallery in (("i2t", images, reports), ("t2i", reports, images)):
            for k, value in recall_at_k(queries, gallery, supported_ks).items():
                metrics[f"{direction}_recall@{k}"] = value
            if paired_labels.shape[1] and bool((paired_labels >= 0).all()):  # precision needs every label
                for k, value in finding_precision_at_k(queries, gallery, paired_labels, paired_labels,
                                                       supported_ks).items():
                    metrics[f"{direction}_precision@{k}"] = value

    if not prompts.finding_names:  # a dataset without label columns: retrieval only
        return with_chance(metrics, paired_labels)
    positive, negative = prompt_embeddings(embed_reports(prompts.features), prompts.finding,
                                           prompts.is_positive, len(prompts.finding_names))
    if has_image.any():
        scores = zero_shot_scores(embed_images(split.image_features[has_image]), positive, negative)
        metrics.update(_auroc_metrics("zeroshot_auroc", scores, split.labels[has_image], prompts.finding_names))
    if has_report.any():
        # The report side of the same question: do report embeddings sit near the right prompts?
        scores = zero_shot_scores(embed_reports(split.report_features[has_report]), positive, negative)
        metrics.update(_auroc_metrics("report_zeroshot_auroc", scores, split.labels[has_report],
                                       prompts.finding_names))
    return with_chance(metrics, paired_labels)


def with_chance(metrics: dict[str, float], paired_labels: torch.Tensor) -> dict[str, float]:
    """`metrics` and, for each registered one with a chance level, `chance_<name>` on this split (retrieval
    chance depends on the number of candidates, `paired_labels`; AUROC's is 0.5)."""
    chance = {f"{CHANCE_PREFIX}{name}": METRICS[name].chance(paired_labels) for name in metrics
              if name in METRICS and METRICS[name].chance is not None}
    return metrics | chance


def _auroc_metrics(prefix: str, scores: torch.Tensor, labels: torch.Tensor,
                   finding_names: tuple[str, ...]) -> dict[str, float]:
    per_finding = {name: auroc(scores[:, index], labels[:, index]) for index, name in enumerate(finding_names)}
    defined = [value for value in per_finding.values() if not math.isnan(value)]
    metrics = {f"{prefix}_{name}": value for name, value in per_finding.items() if not math.isnan(value)}
    if defined:  # macro over findings present and absent in this split
        metrics[f"{prefix}_macro"] = sum(defined) / len(defined)
    return metrics
