"""Federated distillation math on tiny inputs: scores, quality weights, ensemble targets, chunking."""

import math

import pytest
import torch
from helpers import configured, heads, tiny_split

from fedmm.aggregation.ensemble import (
    ensemble_targets,
    ensemble_weights,
    match_loss,
    matching_log_probs,
    quality_score,
)
from fedmm.training.distill import embed_reference, train_with_reference
from fedmm.training.updates import snapshot


def test_quality_score_by_hand():
    # identical one-hot embeddings at scale ln 3: p(i | i) = 3 / (3 + 1) for each of the 2 items
    identity = torch.eye(2)
    assert quality_score(identity, identity, scale=math.log(3), chunk_size=1) == pytest.approx(0.75)
    assert match_loss(identity, identity, math.log(3)).item() == pytest.approx(-math.log(0.75))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 100])
def test_chunked_matching_equals_the_full_matrix(chunk_size):
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(7, 4, generator=generator), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(7, 4, generator=generator), dim=1)
    full = torch.log_softmax(5.0 * queries @ gallery.T, dim=1).diagonal()  # the R x R way
    torch.testing.assert_close(matching_log_probs(queries, gallery, 5.0, chunk_size), full, rtol=1e-5, atol=1e-6)


def test_quality_weights_by_hand():
    # weights ∝ samples · quality: 10·0.6 = 6 and 30·0.1 = 3
    assert ensemble_weights([10, 30], [0.6, 0.1]).tolist() == pytest.approx([2 / 3, 1 / 3])
    assert ensemble_weights([10, 30], None).tolist() == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError):
        ensemble_weights([0, 0], None)


def test_distillation_target_by_hand():
    first, second = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # one reference item, E = 2
    target = ensemble_targets([first, second], torch.tensor([0.75, 0.25], dtype=torch.float64))
    norm = math.sqrt(0.75**2 + 0.25**2)
    assert target[0].tolist() == pytest.approx([0.75 / norm, 0.25 / norm])


def test_an_image_only_hospital_trains_its_image_head_toward_the_global_embeddings_only():
    reference, images_only = tiny_split(32), tiny_split(16, paired=False)
    global_embeddings = embed_reference(heads(7), reference)
    model = heads()
    before = snapshot(model)
    cfg = configured("train", local_epochs=1, batch_size=8, lr=1e-2)
    result = train_with_reference(model, images_only, reference, global_embeddings, cfg, weight=1.0, seed=0)
    after = snapshot(model)
    assert result.steps == 4 and result.num_paired_used == 0 and result.num_image_used == 16
    assert not torch.equal(after["image_head.1.weight"], before["image_head.1.weight"])
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("report_head"))
    mine = embed_reference(model, reference, report=False)
    assert mine.report is None and mine.image.shape == (32, 4)
    # it moved toward the global image embeddings of the same items
    assert (mine.image * global_embeddings.image).sum(1).mean() > (
        embed_reference(heads(), reference).image * global_embeddings.image).sum(1).mean()



@pytest.mark.slow
def test_the_servers_contrastive_epochs_train_the_global_heads_on_the_reference_pairs(smoke_overrides, tmp_path):
    """`strategy.distill.server_contrastive_epochs` (CreamFL's global training on public data): after the same
    two rounds, the global heads fit the reference pairs better (lower InfoNCE) than with distillation alone."""
    from safetensors.torch import load_file

    from fedmm.compose import compose_config
    from fedmm.experiment import run_experiment
    from fedmm.federation import load_federated_data, load_reference
    from fedmm.models.heads import build_heads
    from fedmm.models.losses import symmetric_info_nce

    losses = {}
    for epochs in (0, 2):
        run_dir = tmp_path / str(epochs)
        cfg = compose_config([*smoke_overrides, "strategy=feddistill", "early_stopping.metric=null",
                              f"strategy.distill.server_contrastive_epochs={epochs}", f"run_dir={run_dir}"])
        run_experiment(cfg)
        data, reference = load_federated_data(cfg), load_reference(cfg)
        model = build_heads(data.image_dim, data.report_dim, cfg.heads, seed=0)
        model.load_state_dict(load_file(run_dir / "heads.safetensors"))
        with torch.no_grad():
            images = model.embed_images(reference.image_features)
            reports = model.embed_reports(reference.report_features)
            losses[epochs] = symmetric_info_nce(images, reports, model.scale()).total.item()
    assert losses[2] < losses[0] - 0.05, losses
