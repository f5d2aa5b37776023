"""Loss and metrics against brute-force references on tiny inputs."""

import itertools
import math

import pytest
import torch

from fedmm.evaluation.retrieval import chance_finding_precision, finding_precision_at_k, oracle_recall_at_k, recall_at_k
from fedmm.evaluation.zeroshot import auroc
from fedmm.models.losses import symmetric_info_nce


def normalized(rows: int, dim: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_info_nce_matches_a_loop_over_pairs():
    images, reports, scale = normalized(5, 4, 0), normalized(5, 4, 1), torch.tensor(3.0)
    loss = symmetric_info_nce(images, reports, scale)
    image_to_report = report_to_image = 0.0
    for i in range(5):
        row = [math.exp(3.0 * float(images[i] @ reports[j])) for j in range(5)]
        column = [math.exp(3.0 * float(images[j] @ reports[i])) for j in range(5)]
        image_to_report -= math.log(row[i] / sum(row)) / 5
        report_to_image -= math.log(column[i] / sum(column)) / 5
    assert loss.image_to_report.item() == pytest.approx(image_to_report, rel=1e-5)
    assert loss.report_to_image.item() == pytest.approx(report_to_image, rel=1e-5)
    assert loss.total.item() == pytest.approx((image_to_report + report_to_image) / 2, rel=1e-5)


def test_info_nce_of_hand_computed_pair():
    # Two orthogonal pairs at scale 1: each row's softmax is e^1 / (e^1 + e^0) on the diagonal.
    eye = torch.eye(2)
    loss = symmetric_info_nce(eye, eye, torch.tensor(1.0))
    assert loss.total.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6)


def test_recall_at_k_matches_sorting():
    queries, gallery = normalized(40, 8, 2), normalized(40, 8, 3)
    similarity = queries @ gallery.T
    for k in (1, 5, 10):
        expected = sum(i in similarity[i].argsort(descending=True)[:k].tolist() for i in range(40)) / 40
        assert recall_at_k(queries, gallery, [k])[k] == pytest.approx(expected)


def test_recall_at_k_by_hand():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    gallery = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    # query 0 -> item 0 ranks first; query 1 -> item 1 ranks second (item 2 scores 1.0); query 2 -> item 2 ranks 2nd
    assert recall_at_k(queries, gallery, [1, 2]) == {1: pytest.approx(1 / 3), 2: pytest.approx(1.0)}


def test_finding_precision_counts_retrieved_items_with_the_same_findings():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gallery = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    query_labels = torch.tensor([[1, 0], [0, 1]])
    gallery_labels = torch.tensor([[1, 0], [0, 1], [0, 1]])
    # query 0 retrieves items 0, 1 (labels [1,0], [0,1]): P@1 = 1, P@2 = 1/2.
    # query 1 retrieves items 2, 1 (both [0,1]): P@1 = 1, P@2 = 1.
    precision = finding_precision_at_k(queries, gallery, query_labels, gallery_labels, [1, 2])
    assert precision == {1: pytest.approx(1.0), 2: pytest.approx(0.75)}


def test_auroc_matches_pair_counting_with_ties():
    scores = torch.tensor([0.1, 0.4, 0.4, 0.8, 0.2, 0.4, 0.9])
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 1])
    positives = [s for s, y in zip(scores.tolist(), labels.tolist()) if y]
    negatives = [s for s, y in zip(scores.tolist(), labels.tolist()) if not y]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    assert auroc(scores, labels) == pytest.approx(expected / (len(positives) * len(negatives)))
    assert auroc(torch.tensor([0.3, 0.2]), torch.tensor([1, 1])) != auroc(
        torch.tensor([0.3, 0.2]), torch.tensor([1, 1])
    )


def test_oracle_recall_by_hand():
    # finding sets: A A A B -> group sizes 3 3 3 1; recall@1 = (1/3 * 3 + 1) / 4 = 0.5; recall@3 = 1
    labels = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1]])
    assert oracle_recall_at_k(labels, [1, 3]) == {1: pytest.approx(0.5), 3: pytest.approx(1.0)}


def test_chance_precision_by_hand_and_by_averaging_random_rankings():
    labels = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1]])
    assert chance_finding_precision(labels) == pytest.approx((3 / 4 * 3 + 1 / 4) / 4)  # 0.625
    embeddings = [normalized(4, 3, seed) for seed in range(400)]
    measured = (
        sum(
            finding_precision_at_k(e, normalized(4, 3, 1000 + i), labels, labels, [2])[2]
            for i, e in enumerate(embeddings)
        )
        / 400
    )
    assert measured == pytest.approx(0.625, abs=0.03)


def test_the_registry_names_what_evaluation_reports_and_labels_its_prefixed_forms():
    from fedmm.evaluation import metrics as registry

    # every registered metric is one evaluate_split can report, and every view names registered metrics
    for view in (
        registry.RUN_TABLE,
        registry.GROUP_TABLE,
        registry.GLOBAL_CURVES,
        registry.GROUP_CURVES,
        registry.REPORT_DEFAULT,
        (registry.HEADLINE,),
    ):
        assert all(registry.metric(name) for name in view)
    assert registry.label("personal_i2t_recall@10") == "own model i2t R@10"
    assert registry.label("zeroshot_auroc_atelectasis") == "zeroshot_auroc_atelectasis"  # unregistered: itself
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]])  # finding-set groups of sizes 2, 2, 1, 1
    reference = registry.reference_values(labels)
    assert reference["chance"]["i2t_recall@1"] == 1 / 4 and reference["chance"]["zeroshot_auroc_macro"] == 0.5
    assert reference["ceiling"]["i2t_recall@1"] == (0.5 + 0.5 + 1 + 1) / 4  # min(1, k / group size), averaged


@pytest.mark.parametrize("pairs, reported", [(8, (1, 5)), (10, (1, 5)), (11, (1, 5, 10)), (5, (1,)), (1, ())])
def test_a_split_reports_r_at_k_only_with_more_than_k_pairs_and_each_metrics_chance(pairs, reported):
    """With k or fewer candidates R@k is 1 for any model: it is left out, not reported as a success."""
    from dataclasses import replace

    from helpers import heads, tiny_split

    from fedmm.evaluation.evaluate import Prompts, evaluate_split

    split = tiny_split(pairs)
    split = replace(split, labels=(torch.arange(pairs * 10).reshape(pairs, 10) % 3 == 0).to(torch.int8))
    no_findings = Prompts(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool), ())
    metrics = evaluate_split(heads(), split, no_findings)
    for direction in ("i2t", "t2i"):
        assert tuple(k for k in (1, 5, 10) if f"{direction}_recall@{k}" in metrics) == reported
        assert tuple(k for k in (1, 5, 10) if f"{direction}_precision@{k}" in metrics) == reported
    for k in reported:
        assert metrics[f"chance_i2t_recall@{k}"] == k / pairs
        assert metrics[f"chance_i2t_precision@{k}"] == chance_finding_precision(split.labels)
    assert not [name for name in metrics if name.startswith("chance_") and name.removeprefix("chance_") not in metrics]


def test_hospital_means_and_worst_values_are_over_the_hospitals_that_have_the_metric():
    from fedmm.runs.recorder import summarize_hospitals

    per_hospital = {0: {"i2t_recall@10": 0.4, "zeroshot_auroc_macro": 0.7, "chance_i2t_recall@10": 0.1},
                    1: {"zeroshot_auroc_macro": 0.9, "chance_i2t_recall@5": 0.5},  # 8 pairs: no R@10
                    2: {"i2t_recall@10": 0.2, "zeroshot_auroc_macro": 0.8, "chance_i2t_recall@10": 0.05}}
    summary = summarize_hospitals(per_hospital, {0: "paired", 1: "paired", 2: "image_only"})
    assert summary["hospital_mean"]["i2t_recall@10"] == pytest.approx(0.3)
    assert summary["hospital_worst"]["i2t_recall@10"] == 0.2
    assert summary["hospital_support"] == {"i2t_recall@10": 2, "zeroshot_auroc_macro": 3}
    assert summary["group/paired"]["i2t_recall@10"] == 0.4  # hospital 1 has none to average
    assert not any(name.startswith("chance_") for section in summary.values() for name in section)
