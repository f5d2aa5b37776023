"""FedAvgM, FedAdagrad, FedAdam, FedYogi and FedProx on the server: hand-computed steps, Flower's results, masking."""

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi
from helpers import reply, state, strategy

from fedmm import protocol as keys
from fedmm.aggregation.server_optimizers import (
    AdagradConfig,
    AdaptiveConfig,
    MomentumConfig,
    ServerAdagrad,
    ServerAdam,
    ServerMomentum,
    ServerYogi,
)
from fedmm.models.heads import HeadGroup
from fedmm.strategies.fedprox import FedProx
from fedmm.strategies.roster import RoundLog

pytestmark = pytest.mark.usefixtures("flower_run_identity")
ALL_GROUPS = set(HeadGroup)
ADAM = AdaptiveConfig(lr=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)


def scalar_state(value: float) -> dict[str, np.ndarray]:
    return {"image_head.0.weight": np.array([value], dtype=np.float32)}


def test_fedavgm_momentum_by_hand():
    optimizer = ServerMomentum(MomentumConfig(lr=1.0, momentum=0.5))
    first = optimizer.step(scalar_state(1.0), scalar_state(3.0), ALL_GROUPS)  # Δ=2, v=2
    second = optimizer.step(first, scalar_state(4.0), ALL_GROUPS)  # Δ=1, v=0.5·2+1=2
    assert first["image_head.0.weight"][0] == 3.0 and second["image_head.0.weight"][0] == 5.0


def test_fedadam_and_fedyogi_first_step_by_hand():
    adam = ServerAdam(ADAM).step(scalar_state(1.0), scalar_state(3.0), ALL_GROUPS)  # Δ=2: m=0.2, v=0.04
    expected_adam = 1 + 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2) * 0.2 / (math.sqrt(0.04) + 1e-3)
    assert adam["image_head.0.weight"][0] == pytest.approx(expected_adam, rel=1e-6)
    yogi = ServerYogi(ADAM).step(scalar_state(1.0), scalar_state(3.0), ALL_GROUPS)  # v = 0 - 0.01·4·sign(-4)
    assert yogi["image_head.0.weight"][0] == pytest.approx(1 + 0.1 * 0.2 / (0.2 + 1e-3), rel=1e-6)
    adagrad = ServerAdagrad(AdagradConfig(lr=0.1, tau=1e-3))
    first = adagrad.step(scalar_state(1.0), scalar_state(3.0), ALL_GROUPS)  # Δ=2: v=4
    second = adagrad.step(first, first | {"image_head.0.weight": first["image_head.0.weight"] + 1}, ALL_GROUPS)
    assert first["image_head.0.weight"][0] == pytest.approx(1 + 0.1 * 2 / (2 + 1e-3), rel=1e-6)
    assert second["image_head.0.weight"][0] == pytest.approx(  # Δ=1: v=4+1
        first["image_head.0.weight"][0] + 0.1 * 1 / (math.sqrt(5) + 1e-3), rel=1e-6)


@pytest.mark.parametrize("ours, theirs", [
    (ServerAdam, lambda: FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)),
    (ServerYogi, lambda: FedYogi(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)),
    (lambda cfg: ServerAdagrad(AdagradConfig(lr=0.1, tau=1e-3)), lambda: FedAdagrad(eta=0.1, tau=1e-3)),
    (lambda cfg: ServerMomentum(MomentumConfig(lr=0.7, momentum=0.9)),
     lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9)),
])
def test_plain_server_optimizers_equal_flowers_strategies_over_two_rounds(ours, theirs):
    mine, flower = strategy(server_optimizer=ours(ADAM)), theirs()
    current = {k: v.astype(np.float32) for k, v in state([0.5, -1.0], [2.0], 1.0).items()}
    flower.current_arrays = ArrayRecord({k: Array(v) for k, v in current.items()})
    for server_round, targets in ((1, ([2, 2], [4], 3.0)), (2, ([-1, 3], [0], 2.0))):
        replies = [reply(0, state(*targets), 10, 2, 2, 2), reply(1, state([1, 1], [1], 1.0), 30, 0, 6, 0)]
        mine.roster.logs[server_round] = RoundLog(sampled=[0, 1])
        mine.current_arrays = ArrayRecord({k: Array(v) for k, v in current.items()})
        ours_next = {k: v.numpy() for k, v in mine.aggregate_train(server_round, replies)[0].items()}
        if isinstance(flower, (FedAdam, FedYogi, FedAdagrad)):
            flower.current_arrays = dict(current)  # FedOpt's configure_train stores it as numpy
        theirs_next = {k: v.numpy() for k, v in flower.aggregate_train(server_round, replies)[0].items()}
        for key in current:
            np.testing.assert_allclose(ours_next[key], theirs_next[key], rtol=1e-5, atol=1e-7)
        current = ours_next


def test_modality_aware_optimizer_freezes_untrained_heads_and_their_state():
    built = strategy(modality_aware=True, server_optimizer=ServerAdam(ADAM))
    start = state([0, 0], [10], 1.0)
    built.roster.logs[1] = RoundLog(sampled=[0, 1])
    built.current_arrays = ArrayRecord({k: Array(v) for k, v in start.items()})
    # nobody trained the report head this round (no reports, no pairs)
    replies = [reply(0, state([2, 2], [999], 999.0), 10, 0, 2, 0), reply(1, state([4, 4], [999], 999.0), 30, 0, 6, 0)]
    new = {k: v.numpy() for k, v in built.aggregate_train(1, replies)[0].items()}
    assert new["report_head.0.weight"][0] == 10 and new["logit_scale"] == 1.0  # untouched
    assert not np.array_equal(new["image_head.0.weight"], start["image_head.0.weight"])
    assert built.server_optimizer.steps == {HeadGroup.IMAGE: 1}
    assert "report_head.0.weight" not in built.server_optimizer.first  # its Adam state has not started


def test_fedprox_sends_mu_in_the_train_config():
    built = strategy(FedProx, proximal_mu=0.25)
    arrays = ArrayRecord({k: Array(v) for k, v in state([1, 1], [1], 1.0).items()})
    messages = list(built.configure_train(1, arrays, ConfigRecord(), grid=None))
    assert len(messages) == 3
    assert all(message.content[keys.CONFIG][keys.PROXIMAL_MU] == 0.25 for message in messages)
