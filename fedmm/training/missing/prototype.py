"""Prototype anchoring: a unimodal sample is pulled toward the other modality's prototype of its cluster.

In the spirit of PmcmFL (Bao et al., 2023, "Multimodal Federated Learning with Missing Modality via
Prototype Mask and Contrast", arXiv:2312.13508), where class prototypes of each modality stand in for a
missing one and a prototype-contrastive loss aligns samples to them. Contrastive heads train without
class labels, so the prototypes here are clusters of the non-private reference set: at the start of
a round, the hospital embeds the reference pairs with the model it received, runs k-means on the joint
(image, report) embeddings, and averages each cluster per modality into an image prototype p^I_c and a
report prototype p^R_c (unit vectors). An image-only sample is assigned, with the received model, to the
cluster whose image prototype is nearest (c_i = argmax_c <u_i, p^I_c>); training then minimizes

    ℓ_i = CE( <u_i, p^R_c>_c / τ , c_i )

which pulls its image embedding u_i toward the report prototype of its cluster and away from the other
clusters' report prototypes (report-only samples: the same with the modalities swapped). Prototypes and
assignments are fixed for the round (pseudo-labels from the received model) and carry no gradient, so a
unimodal sample trains only the head of its own modality. Nothing private leaves the hospital: the
prototypes come from public data and are recomputed locally.
"""

from dataclasses import dataclass

import torch
from torch import nn

from fedmm.config import MissingModalityConfig
from fedmm.data.modality import Availability
from fedmm.federation import SplitTensors
from fedmm.models.heads import ContrastiveHeads
from fedmm.training.missing.base import TrainingRows, embed_rows, heads_device

KMEANS_ITERATIONS = 25


def kmeans(points: torch.Tensor, k: int, seed: int, iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """(R, D) points -> (R,) cluster of each, Lloyd's algorithm from a seeded k-means++ start (Arthur and
    Vassilvitskii, 2007). Deterministic for a seed; clusters that end up empty are simply unused."""
    generator = torch.Generator().manual_seed(seed)
    points = points.detach().cpu().double()
    k = min(k, len(points))
    centers = points[torch.randint(len(points), (1,), generator=generator)]
    while len(centers) < k:  # k-means++: the next center with probability ∝ squared distance to the nearest
        distance = torch.cdist(points, centers).min(dim=1).values.pow(2)
        if distance.sum() <= 0:
            break  # fewer distinct points than k
        centers = torch.cat([centers, points[torch.multinomial(distance, 1, generator=generator)]])
    assignment = torch.cdist(points, centers).argmin(dim=1)
    for _ in range(iterations):
        for c in range(len(centers)):
            members = assignment == c
            if members.any():
                centers[c] = points[members].mean(dim=0)
        updated = torch.cdist(points, centers).argmin(dim=1)
        if torch.equal(updated, assignment):
            break
        assignment = updated
    return assignment


def cluster_prototypes(embeddings: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """(R, E) embeddings and (R,) clusters -> (C, E) unit-norm means of the non-empty clusters, in order."""
    clusters = torch.unique(assignment)  # sorted
    return nn.functional.normalize(torch.stack([embeddings[assignment == c].mean(dim=0) for c in clusters]), dim=-1)


@dataclass(frozen=True)
class PrototypeAnchoring:
    rows: TrainingRows  # pairs and unimodal rows, on the heads' device
    image_prototypes: torch.Tensor  # (C, E)
    report_prototypes: torch.Tensor  # (C, E)
    cluster: torch.Tensor  # (n,) long: c_i of each unimodal row; -1 elsewhere
    temperature: float
    weight: float

    @classmethod
    def prepare(cls, cfg: MissingModalityConfig, heads: ContrastiveHeads, data: SplitTensors,
                reference: SplitTensors, seed: int) -> "PrototypeAnchoring":
        device = heads_device(heads)
        reference_images = embed_rows(heads.embed_images, reference.image_features, device)  # (R, E)
        reference_reports = embed_rows(heads.embed_reports, reference.report_features, device)  # (R, E)
        assignment = kmeans(torch.cat([reference_images, reference_reports], dim=1), cfg.num_prototypes, seed)
        image_prototypes = cluster_prototypes(reference_images.cpu(), assignment).to(device)
        report_prototypes = cluster_prototypes(reference_reports.cpu(), assignment).to(device)
        image_only, report_only = data.mask(Availability.IMAGE_ONLY), data.mask(Availability.REPORT_ONLY)
        cluster = torch.full((len(data),), -1, dtype=torch.long)
        if image_only.any():
            own = embed_rows(heads.embed_images, data.image_features[image_only], device)
            cluster[image_only] = (own @ image_prototypes.T).argmax(dim=1).cpu()
        if report_only.any():
            own = embed_rows(heads.embed_reports, data.report_features[report_only], device)
            cluster[report_only] = (own @ report_prototypes.T).argmax(dim=1).cpu()
        paired = data.paired_mask
        rows = TrainingRows(data.image_features, data.report_features, paired, image_only, report_only, paired)
        return cls(rows.to(device), image_prototypes, report_prototypes, cluster.to(device), cfg.temperature,
                   cfg.weight)

    def unimodal_loss(self, heads: ContrastiveHeads, batch: torch.Tensor) -> torch.Tensor | None:
        terms = []
        images = batch[self.rows.image_only[batch]]
        if len(images):
            logits = heads.embed_images(self.rows.image_features[images]) @ self.report_prototypes.T  # (b, C)
            terms.append(nn.functional.cross_entropy(logits / self.temperature, self.cluster[images], reduction="none"))
        reports = batch[self.rows.report_only[batch]]
        if len(reports):
            logits = heads.embed_reports(self.rows.report_features[reports]) @ self.image_prototypes.T  # (b, C)
            terms.append(
                nn.functional.cross_entropy(logits / self.temperature, self.cluster[reports], reduction="none")
            )
        return self.weight * torch.cat(terms).mean() if terms else None
