"""All metrics of a pair of heads on one split: retrieval, finding-aware precision, zero-shot AUROC."""

import math
from dataclasses import dataclass

import torch

from fedmm.evaluation.metrics import KS
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

    if paired.sum() >= 2:
        images = embed_images(split.image_features[paired])
        reports = embed_reports(split.report_features[paired])
        labels = split.labels[paired]
        for direction, queries, gallery in (("i2t", images, reports), ("t2i", reports, images)):
            for k, value in recall_at_k(queries, gallery, KS).items():
                metrics[f"{direction}_recall@{k}"] = value
            if labels.shape[1] and bool((labels >= 0).all()):  # finding-aware precision needs every label
                for k, value in finding_precision_at_k(queries, gallery, labels, labels, KS).items():
                    metrics[f"{direction}_precision@{k}"] = value

    if not prompts.finding_names:  # a dataset without label columns: retrieval only
        return metrics
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
    return metrics


def _auroc_metrics(prefix: str, scores: torch.Tensor, labels: torch.Tensor,
                   finding_names: tuple[str, ...]) -> dict[str, float]:
    per_finding = {name: auroc(scores[:, index], labels[:, index]) for index, name in enumerate(finding_names)}
    defined = [value for value in per_finding.values() if not math.isnan(value)]
    metrics = {f"{prefix}_{name}": value for name, value in per_finding.items() if not math.isnan(value)}
    if defined:  # macro over findings present and absent in this split
        metrics[f"{prefix}_macro"] = sum(defined) / len(defined)
    return metrics
