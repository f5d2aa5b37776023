"""MOON by hand: the model-contrastive term, its first round (no gradient), and the previous model it keeps."""

import math

import pytest
import torch
from helpers import heads, tiny_split, tiny_step

from fedmm.federation import SplitTensors
from fedmm.strategies.moon import MoonOptions, model_contrastive_loss, moon_term, moon_update
from fedmm.training.local import Batch
from fedmm.training.missing import paired_rows
from fedmm.training.updates import global_update, snapshot


def test_model_contrastive_loss_by_hand():
    z = torch.tensor([[1.0, 0.0]])
    z_global, z_previous = torch.tensor([[0.6, 0.8]]), torch.tensor([[0.0, 1.0]])
    expected = -math.log(math.exp(0.6 / 0.5) / (math.exp(0.6 / 0.5) + math.exp(0.0 / 0.5)))
    assert model_contrastive_loss(z, z_global, z_previous, 0.5).item() == pytest.approx(expected, rel=1e-6)


def batch_of(split: SplitTensors) -> Batch:
    return Batch(paired_rows(split), torch.arange(len(split)))


def test_the_term_has_no_gradient_when_the_previous_model_is_the_global_one():
    model, received, batch = heads(1), snapshot(heads(2)), batch_of(tiny_split())
    term = moon_term(model, received, received, MoonOptions(mu=1.0, temperature=0.5), torch.device("cpu"))(model, batch)
    term.backward()
    assert term.item() == pytest.approx(math.log(2), rel=1e-6)
    assert all(p.grad is None or p.grad.abs().max() < 1e-6 for p in model.parameters())


def test_the_term_pulls_toward_the_global_model_and_away_from_the_previous_one():
    received, previous, batch = snapshot(heads(2)), snapshot(heads(3)), batch_of(tiny_split())
    options, model = MoonOptions(mu=1.0, temperature=0.5), heads(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    term = moon_term(model, received, previous, options, torch.device("cpu"))
    before = term(model, batch).item()
    for _ in range(20):
        optimizer.zero_grad()
        term(model, batch).backward()
        optimizer.step()
    assert term(model, batch).item() < before


def test_moon_update_sends_and_keeps_its_trained_heads_and_mu_zero_is_fedavg():
    received, data = snapshot(heads(1)), tiny_split()
    update = moon_update(tiny_step(heads(5), data, 0, "moon", "strategy.mu=0.0"), received, None)
    plain = global_update(tiny_step(heads(6), data, 0), received)
    assert all(torch.equal(update.shared[k], plain.shared[k]) for k in received)
    assert all(torch.equal(update.personal[k], update.shared[k]) for k in received)  # the next "previous" model
    pulled = moon_update(tiny_step(heads(5), data, 0, "moon", "strategy.mu=5.0"), received, snapshot(heads(3)))
    assert any(not torch.equal(pulled.shared[k], plain.shared[k]) for k in received)
