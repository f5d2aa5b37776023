"""Local updates on tiny seeded inputs: FedProx's and Ditto's proximal term, FedPer/FedRep's split, Ditto."""

import torch
from torch import nn

from fedmm.config import ExperimentConfig, HeadsConfig, PersonalConfig, StrategyConfig, TrainConfig
from fedmm.data.modality import AVAILABILITY_CODES, Availability
from fedmm.hospitals import SplitTensors
from fedmm.models.heads import build_heads
from fedmm.strategies.fedper import SharedBaseFedAvg
from fedmm.training.local import train_heads
from fedmm.training.personalized import (
    ditto_update, fedper_update, fedrep_update, global_update, snapshot, split_personal,
)
from fedmm.training.regularizers import proximal_term

HEADS = HeadsConfig(hidden_dim=8, embed_dim=4)


def tiny_split(num: int = 24, paired: bool = True) -> SplitTensors:
    generator = torch.Generator().manual_seed(0)
    code = AVAILABILITY_CODES[Availability.PAIRED if paired else Availability.IMAGE_ONLY]
    return SplitTensors(torch.randn(num, 6, generator=generator), torch.randn(num, 5, generator=generator),
                        torch.full((num,), code, dtype=torch.int8), torch.zeros(num, 10, dtype=torch.int8))


def tiny_cfg(ditto_lambda: float = 0.1) -> ExperimentConfig:
    return ExperimentConfig(train=TrainConfig(local_epochs=2, batch_size=8, lr=1e-2),
                            strategy=StrategyConfig(personal=PersonalConfig(ditto_lambda=ditto_lambda, head_epochs=1)))


def heads(seed: int = 0):
    return build_heads(6, 5, HEADS, seed)


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
    received, data, cfg = snapshot(heads()), tiny_split(), tiny_cfg()
    plain = global_update(heads(1), received, data, cfg, seed=3, device="cpu").shared
    again = global_update(heads(2), received, data, cfg, seed=3, device="cpu", proximal_mu=0.0).shared
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    proximal = global_update(heads(1), received, data, cfg, seed=3, device="cpu", proximal_mu=50.0).shared
    assert distance(proximal, received) < distance(plain, received)


def test_fedper_keeps_exactly_the_final_layers():
    state = snapshot(heads())
    shared, personal = split_personal(state)
    assert sorted(personal) == ["image_head.3.bias", "image_head.3.weight", "report_head.3.bias", "report_head.3.weight"]
    assert set(shared) | set(personal) == set(state) and not set(shared) & set(personal)
    server = SharedBaseFedAvg(node_of_hospital={0: 1}, clients_per_round=1, seed=0, evaluate_every=1, num_rounds=1)
    assert set(server.initial_arrays(state).keys()) == set(shared)
    update = fedper_update(heads(1), shared, personal, tiny_split(), tiny_cfg(), seed=0, device="cpu")
    assert set(update.shared) == set(shared) and set(update.personal) == set(personal)
    assert not torch.equal(update.personal["image_head.3.weight"], personal["image_head.3.weight"])  # trained, kept


def test_fedrep_trains_the_final_layers_with_the_base_frozen_first():
    model, data, cfg = heads(), tiny_split(), tiny_cfg()
    shared, personal = split_personal(snapshot(model))
    train_heads(model, data, cfg.train, seed=0, parameters=list(personal))  # FedRep's first phase
    after_shared, after_personal = split_personal(snapshot(model))
    assert all(torch.equal(after_shared[k], shared[k]) for k in shared)
    assert all(not torch.equal(after_personal[k], personal[k]) for k in personal)
    update = fedrep_update(heads(), shared, personal, data, cfg, seed=0, device="cpu")
    assert not torch.equal(update.shared["image_head.1.weight"], shared["image_head.1.weight"])  # then the base


def test_ditto_sends_fedavgs_update_and_keeps_a_lambda_regularized_personal_model():
    received, data = snapshot(heads()), tiny_split()
    fedavg = global_update(heads(1), received, data, tiny_cfg(), seed=5, device="cpu")
    close, free = (ditto_update(heads(1), heads(2), received, None, data, tiny_cfg(weight), seed=5, device="cpu")
                   for weight in (10.0, 0.0))
    assert all(torch.equal(close.shared[k], fedavg.shared[k]) for k in received)  # the global step is FedAvg's
    # λ = 0: the personal model is plain local training from the global model (its own seed stream)
    alone = heads(3)
    alone.load_state_dict(received)
    train_heads(alone, data, tiny_cfg().train, seed=6)
    assert all(torch.equal(free.personal[k], v) for k, v in snapshot(alone).items())
    assert distance(close.personal, received) < distance(free.personal, received)  # λ pulls toward w_global
