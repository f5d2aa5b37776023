"""Local updates on tiny seeded inputs: FedProx's and Ditto's proximal term, FedPer/FedRep's split, Ditto."""

import torch
from helpers import heads, strategy, tiny_cfg, tiny_split, tiny_step
from torch import nn

from fedmm.strategies.ditto import ditto_update
from fedmm.strategies.fedper import SharedBaseFedAvg, fedper_update
from fedmm.strategies.fedrep import fedrep_update
from fedmm.training.local import train_heads
from fedmm.training.regularizers import proximal_term
from fedmm.training.updates import global_update, snapshot, split_personal


def distance(a: dict, b: dict) -> float:
    return sum((a[k] - b[k]).pow(2).sum().item() for k in a) ** 0.5


def test_proximal_term_value_and_gradient_by_hand():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 3.0]]))
    term = proximal_term(model, {"weight": torch.tensor([[0.0, 1.0]])}, weight=0.5)
    term.backward()
    assert term.item() == 0.5 * 0.5 * (1 + 4)  # (μ/2)·||w - w_g||²
    assert torch.equal(model.weight.grad, torch.tensor([[0.5, 1.0]]))  # μ·(w - w_g)


def test_fedprox_with_mu_zero_is_fedavgs_step_and_mu_keeps_heads_near_global():
    received, data = snapshot(heads()), tiny_split()
    plain = global_update(tiny_step(heads(1), data, 3), received).shared
    again = global_update(tiny_step(heads(2), data, 3), received, proximal_mu=0.0).shared
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    proximal = global_update(tiny_step(heads(1), data, 3), received, proximal_mu=50.0).shared
    assert distance(proximal, received) < distance(plain, received)


def test_fedper_keeps_exactly_the_final_layers():
    state = snapshot(heads())
    shared, personal = split_personal(state)
    assert sorted(personal) == [
        "image_head.3.bias",
        "image_head.3.weight",
        "report_head.3.bias",
        "report_head.3.weight",
    ]
    assert set(shared) | set(personal) == set(state) and not set(shared) & set(personal)
    server = strategy(SharedBaseFedAvg, num_hospitals=1)
    assert set(server.initial_arrays(state).keys()) == set(shared)
    update = fedper_update(tiny_step(heads(1), tiny_split(), 0, "fedper"), shared, personal)
    assert set(update.shared) == set(shared) and set(update.personal) == set(personal)
    assert not torch.equal(update.personal["image_head.3.weight"], personal["image_head.3.weight"])  # trained, kept


def test_fedrep_trains_the_final_layers_with_the_base_frozen_first():
    model, data, cfg = heads(), tiny_split(), tiny_cfg("fedrep", "strategy.head_epochs=1")
    shared, personal = split_personal(snapshot(model))
    train_heads(model, data, cfg.train, seed=0, parameters=list(personal))  # FedRep's first phase
    after_shared, after_personal = split_personal(snapshot(model))
    assert all(torch.equal(after_shared[k], shared[k]) for k in shared)
    assert all(not torch.equal(after_personal[k], personal[k]) for k in personal)
    update = fedrep_update(tiny_step(heads(), data, 0, "fedrep", "strategy.head_epochs=1"), shared, personal)
    assert not torch.equal(update.shared["image_head.1.weight"], shared["image_head.1.weight"])  # then the base


def test_ditto_sends_fedavgs_update_and_keeps_a_lambda_regularized_personal_model():
    received, data = snapshot(heads()), tiny_split()
    fedavg = global_update(tiny_step(heads(1), data, 5), received)
    close, free = (
        ditto_update(
            tiny_step(heads(1), data, 5, "ditto", f"strategy.ditto_lambda={weight}", personal_model=heads(2)),
            received,
            None,
        )
        for weight in (10.0, 0.0)
    )
    assert all(torch.equal(close.shared[k], fedavg.shared[k]) for k in received)  # the global step is FedAvg's
    # λ = 0: the personal model is plain local training from the global model (its own seed stream)
    alone = heads(3)
    alone.load_state_dict(received)
    train_heads(alone, data, tiny_cfg().train, seed=6)
    assert all(torch.equal(free.personal[k], v) for k, v in snapshot(alone).items())
    assert distance(close.personal, received) < distance(free.personal, received)  # λ pulls toward w_global
