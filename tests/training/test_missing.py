"""Missing-modality handlers on tiny inputs: k-means and prototypes, the prototype term, retrieval
imputation, what trains and what counts, and the options they refuse."""

import math

import pytest
import torch
from helpers import configured
from torch import nn

from fedmm.compose import compose_config
from fedmm.config import ConfigError
from fedmm.data.modality import AVAILABILITY_CODES, Availability
from fedmm.federation import SplitTensors
from fedmm.models.heads import build_heads
from fedmm.training.local import train_heads
from fedmm.training.missing import build_handler, handler_factory
from fedmm.training.missing.prototype import cluster_prototypes, kmeans
from fedmm.training.missing.retrieval import nearest_neighbours
from fedmm.training.updates import snapshot
from fedmm.validation import validate_config

PAIRED, IMAGE_ONLY, REPORT_ONLY = (AVAILABILITY_CODES[a] for a in Availability)


class IdentityHeads(nn.Module):
    """Heads whose embeddings are the normalized features themselves: targets can be computed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.image_head = nn.Identity()
        self.report_head = nn.Identity()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(features, dim=-1)

    def embed_reports(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(features, dim=-1)


def split(image: list, report: list, codes: list) -> SplitTensors:
    return SplitTensors(torch.tensor(image, dtype=torch.float32), torch.tensor(report, dtype=torch.float32),
                        torch.tensor(codes, dtype=torch.int8), torch.zeros(len(codes), 10, dtype=torch.int8))


# Reference set: two kinds of study. Kind A: images near e1, reports near e2; kind B: images near e3, reports near e4.
REFERENCE = split(image=[[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 0.9, 0.1]],
                  report=[[0, 1, 0, 0], [0.1, 0.9, 0, 0], [0, 0, 0, 1], [0, 0, 0.1, 0.9]],
                  codes=[PAIRED] * 4)


def test_kmeans_separates_blobs_and_follows_its_seed():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2, generator=generator) for c in centers])
    assignment = kmeans(points, 3, seed=1)
    truth = torch.arange(3).repeat_interleave(20)
    for blob in range(3):  # each blob is one cluster, and different blobs different clusters
        assert len(set(assignment[truth == blob].tolist())) == 1
    assert len(set(assignment.tolist())) == 3
    assert torch.equal(assignment, kmeans(points, 3, seed=1))


def test_cluster_prototypes_are_unit_means_per_cluster():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    prototypes = cluster_prototypes(embeddings, torch.tensor([0, 0, 2]))
    assert torch.allclose(prototypes, torch.tensor([[0.5 ** 0.5, 0.5 ** 0.5], [0.6, 0.8]]))


def test_prototype_targets_and_loss_by_hand():
    data = split(image=[[0.8, 0.2, 0, 0], [0, 0, 0, 0]], report=[[0, 0, 0, 0], [0, 0, 0.2, 0.8]],
                 codes=[IMAGE_ONLY, REPORT_ONLY])
    cfg = configured("missing", handler="prototype", num_prototypes=2, temperature=0.5, weight=2.0)
    handler = build_handler(cfg, IdentityHeads(), data, REFERENCE, seed=0)
    unit = nn.functional.normalize(REFERENCE.image_features[:2], dim=-1)
    a_image = nn.functional.normalize(unit.mean(dim=0), dim=0)  # kind A's image prototype: mean of unit embeddings
    kind_a = next(c for c in range(2) if torch.allclose(handler.image_prototypes[c], a_image))
    kind_b = 1 - kind_a
    assert handler.cluster.tolist() == [kind_a, kind_b]  # the image row is kind A, the report row kind B
    assert handler.rows.image_only.tolist() == [True, False] and handler.rows.report_only.tolist() == [False, True]

    loss = handler.unimodal_loss(IdentityHeads(), torch.tensor([0, 1]))
    u = nn.functional.normalize(torch.tensor([0.8, 0.2, 0, 0]), dim=0)
    v = nn.functional.normalize(torch.tensor([0, 0, 0.2, 0.8]), dim=0)
    image_term = -torch.log_softmax(handler.report_prototypes @ u / 0.5, dim=0)[kind_a]
    report_term = -torch.log_softmax(handler.image_prototypes @ v / 0.5, dim=0)[kind_b]
    assert math.isclose(loss.item(), 2.0 * (image_term + report_term).item() / 2, rel_tol=1e-6)
    assert handler.unimodal_loss(IdentityHeads(), torch.tensor([], dtype=torch.long)) is None


def test_retrieval_imputes_the_other_side_of_the_nearest_reference_studies():
    data = split(image=[[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]],
                 report=[[0, 0, 0, 0], [0, 0, 0.1, 0.9], [1, 0, 0, 0]],
                 codes=[IMAGE_ONLY, REPORT_ONLY, PAIRED])
    nearest = build_handler(configured("missing", handler="retrieval"), IdentityHeads(), data, REFERENCE, seed=0)
    rows = nearest.rows
    assert torch.equal(rows.report_features[0], REFERENCE.report_features[0])  # image e1 -> study 0's report
    assert torch.equal(rows.image_features[1], REFERENCE.image_features[3])  # report (0,0,.1,.9) -> study 3's image
    assert torch.equal(rows.image_features[2], data.image_features[2])  # real pairs untouched
    assert rows.pair.all() and rows.real_pair.tolist() == [False, False, True]
    two = build_handler(configured("missing", handler="retrieval", retrieval_k=2), IdentityHeads(), data, REFERENCE, 0)
    assert torch.allclose(two.rows.report_features[0], REFERENCE.report_features[:2].mean(dim=0))
    # what counts as the hospital's own: pairs 1, images 2 (one imputed report does not count), reports 2
    assert rows.counts(data.image_mask, data.report_mask) == (1, 2, 2)


def test_nearest_neighbours_order_and_ties():
    keys = nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert nearest_neighbours(torch.tensor([[0.0, 1.0]]), keys, 2).tolist() == [[2, 0]]


HEADS = configured("heads", hidden_dim=8, embed_dim=4)
TRAIN = configured("train", local_epochs=2, batch_size=4, lr=1e-2)


def image_only_hospital(num: int = 12) -> SplitTensors:
    generator = torch.Generator().manual_seed(0)
    return SplitTensors(torch.randn(num, 4, generator=generator), torch.zeros(num, 4),
                        torch.full((num,), IMAGE_ONLY, dtype=torch.int8), torch.zeros(num, 10, dtype=torch.int8))


def changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_ignore_leaves_an_image_only_hospital_untrained():
    heads = build_heads(4, 4, HEADS, seed=0)
    before = snapshot(heads)
    result = train_heads(heads, image_only_hospital(), TRAIN, seed=0)
    assert (result.steps, result.num_image_used, result.num_report_used) == (0, 0, 0)
    assert not changed(before, snapshot(heads), "")


@pytest.mark.parametrize("handler", ["prototype", "retrieval"])
def test_handlers_let_an_image_only_hospital_train_its_image_head(handler):
    reference = SplitTensors(torch.randn(40, 4, generator=torch.Generator().manual_seed(1)),
                             torch.randn(40, 4, generator=torch.Generator().manual_seed(2)),
                             torch.full((40,), PAIRED, dtype=torch.int8), torch.zeros(40, 10, dtype=torch.int8))
    heads, data = build_heads(4, 4, HEADS, seed=0), image_only_hospital()
    before = snapshot(heads)
    missing = handler_factory(configured("missing", handler=handler, num_prototypes=4), data, reference, seed=0)
    result = train_heads(heads, data, TRAIN, seed=0, missing=missing)
    after = snapshot(heads)
    assert result.steps == 2 * 3 and math.isfinite(result.loss)
    assert (result.num_paired_used, result.num_image_used, result.num_report_used) == (0, 12, 0)
    assert changed(before, after, "image_head")
    # prototype targets carry no gradient: the report head and the temperature stay put;
    # retrieval trains both heads on the completed pairs, but only the image head counts as this hospital's
    assert changed(before, after, "report_head") == (handler == "retrieval")


@pytest.mark.parametrize("overrides, message", [
    (["missing=prototype", "strategy=feddistill"], "does not apply to feddistill"),
    (["missing=retrieval", "privacy=dp_sgd", "strategy=fedavg"], "not supported"),
    (["missing.handler=impute"], r"missing.handler='impute' is unknown; valid: \['ignore', 'prototype', 'retrieval'\]"),
    (["missing=prototype", "missing.num_prototypes=1"], "missing.num_prototypes=1 must be at least 2"),
])
def test_unsupported_handler_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedper", "fedrep", "ditto", "finetune",
                                      "local", "centralized"])
@pytest.mark.parametrize("handler", ["prototype", "retrieval"])
def test_handlers_validate_with_averaging_personalized_and_reference_strategies(strategy, handler):
    validate_config(compose_config([f"missing={handler}", f"strategy={strategy}"]))
