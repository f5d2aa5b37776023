"""The pool engine's transport: what it does when a worker process is gone."""

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedmm import protocol as keys
from fedmm.compose import compose_config
from fedmm.simulation.pool import PoolGrid, pool_size

pytestmark = pytest.mark.usefixtures("flower_run_identity")  # the tests build Flower Messages


def queries(grid: PoolGrid) -> list[Message]:
    return [Message(RecordDict({keys.CONFIG: ConfigRecord()}), message_type=MessageType.QUERY, dst_node_id=node)
            for node in grid.get_node_ids()]


def test_a_pool_answers_every_node_and_fails_the_messages_of_a_dead_worker(smoke_overrides):
    cfg = compose_config(smoke_overrides)
    grid = PoolGrid(cfg, num_nodes=3, num_workers=1)
    try:
        replies = grid.send_and_receive(queries(grid), timeout=300)
        described = sorted(int(reply.content[keys.METRICS][keys.HOSPITAL_ID]) for reply in replies)
        assert described == [0, 1, 2]  # one worker serves every hospital
        grid.workers[0].process.kill()
        grid.workers[0].process.join()
        replies = grid.send_and_receive(queries(grid), timeout=60)
        assert len(replies) == 3 and all(reply.has_error() for reply in replies)
        assert all("died" in reply.error.reason for reply in replies)
    finally:
        grid.close()


def test_the_pool_has_a_worker_per_hospital_sized_share_of_the_cores(smoke_overrides):
    assert pool_size(compose_config([*smoke_overrides, "scenario.num_hospitals=1"])) == 1
    assert pool_size(compose_config([*smoke_overrides, "simulation.client_cpus=64"])) == 1  # at least one
