"""Cross-modal retrieval metrics, computed in query chunks so memory stays bounded."""

from collections.abc import Iterator, Sequence

import torch

QUERY_CHUNK = 1024  # rows of the (Q, G) similarity matrix held at once


def _similarity_chunks(queries: torch.Tensor, gallery: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    for start in range(0, len(queries), QUERY_CHUNK):
        yield start, queries[start:start + QUERY_CHUNK] @ gallery.T  # (chunk, G)


def recall_at_k(queries: torch.Tensor, gallery: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Share of queries whose own pair (query i <-> gallery i) ranks in the top k.

    queries (Q, E) and gallery (Q, E) are L2-normalized embeddings; rank = 1 + #items scored strictly higher.
    """
    hits = {k: 0 for k in ks}
    for start, similarity in _similarity_chunks(queries, gallery):
        rows = torch.arange(len(similarity))
        own = similarity[rows, rows + start].unsqueeze(1)  # (chunk, 1)
        rank = (similarity > own).sum(dim=1) + 1
        for k in ks:
            hits[k] += int((rank <= k).sum())
    return {k: hits[k] / len(queries) for k in ks}


def finding_precision_at_k(queries: torch.Tensor, gallery: torch.Tensor, query_labels: torch.Tensor,
                           gallery_labels: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Mean share of the top-k retrieved items whose finding set equals the query's (ties by index)."""
    max_k = min(max(ks), len(gallery))
    totals = {k: 0.0 for k in ks}
    for start, similarity in _similarity_chunks(queries, gallery):
        top = similarity.topk(max_k, dim=1).indices  # (chunk, max_k)
        wanted = query_labels[start:start + len(similarity)].unsqueeze(1)  # (chunk, 1, F)
        match = (gallery_labels[top] == wanted).all(dim=-1).float()  # (chunk, max_k)
        for k in ks:
            totals[k] += float(match[:, :k].mean(dim=1).sum())
    return {k: totals[k] / len(queries) for k in ks}


def oracle_recall_at_k(labels: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Expected recall@k of a retriever that knows every finding but cannot tell identical-finding studies apart.

    It ranks the g items sharing the query's finding set first, in random order: recall@k = min(1, k / g).
    This is the ceiling for retrieval from labels alone on this gallery.
    """
    group_size = finding_group_sizes(labels)
    return {k: float(torch.clamp(k / group_size, max=1.0).mean()) for k in ks}


def chance_finding_precision(labels: torch.Tensor) -> float:
    """Expected finding-aware precision@k of a random ranking (any k): the mean share of the gallery
    that has the query's finding set."""
    return float(finding_group_sizes(labels).mean() / len(labels))


def finding_group_sizes(labels: torch.Tensor) -> torch.Tensor:
    """(N,) float64: how many items (itself included) share each item's exact finding set. Without label
    columns nothing makes two studies alike: every group is the study alone."""
    if labels.shape[1] == 0:
        return torch.ones(len(labels), dtype=torch.float64)
    _, group, counts = torch.unique(labels, dim=0, return_inverse=True, return_counts=True)
    return counts[group].double()
