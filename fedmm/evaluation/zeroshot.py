"""Zero-shot finding classification from text prompts, scored by AUROC."""

import torch


def prompt_embeddings(report_embeddings: torch.Tensor, prompt_finding: torch.Tensor,
                      prompt_is_positive: torch.Tensor, num_findings: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per finding, the normalized mean embedding of its positive and of its negative prompts: (F, E) each."""
    def mean_of(is_positive: bool) -> torch.Tensor:
        rows = [report_embeddings[(prompt_finding == f) & (prompt_is_positive == is_positive)].mean(0)
                for f in range(num_findings)]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    return mean_of(True), mean_of(False)


def zero_shot_scores(image_embeddings: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """(N, F) score: similarity to "finding present" minus similarity to "finding absent"."""
    return image_embeddings @ positive.T - image_embeddings @ negative.T


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties) over the rows whose label is
    known (0 or 1; -1 is unknown, as in a hospital folder's empty label cell); nan with one class only."""
    known = labels >= 0
    scores, labels = scores[known], labels[known].bool()
    num_positive, num_negative = int(labels.sum()), int((~labels).sum())
    if num_positive == 0 or num_negative == 0:
        return float("nan")
    order = torch.argsort(scores.double(), stable=True)
    sorted_scores = scores.double()[order]
    ranks = torch.empty(len(scores), dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
    ranks[order] = average_rank[inverse]
    rank_sum = float(ranks[labels].sum())
    return (rank_sum - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative)
