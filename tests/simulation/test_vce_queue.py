"""fedmm's one-pass message sweep hands out what Flower 1.41's per-node loop hands out."""

import threading
from queue import Queue

import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from fedmm.simulation import vce_queue

RUN_ID, TASK_ID = 7, 11


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    """Messages are built by the ServerApp of run RUN_ID (as the SuperLink's node)."""
    for name, value in (("_run_id", RUN_ID), ("_node_id", SUPERLINK_NODE_ID), ("_task_id", TASK_ID)):
        monkeypatch.setattr(TaskIdentity, name, value)


def state_with_messages(num_nodes: int, messages_to: list[int]):
    """An in-memory LinkState as the Simulation Engine builds it, with one stored message for each
    position in `messages_to` (a node's index; repeats give a node several)."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    nodes = _register_nodes(num_nodes, factory)
    state = factory.state()
    run = Run.create_empty(run_id=RUN_ID)
    run.primary_task_id, run.federation_id = TASK_ID, NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[TASK_ID] = Task(task_id=TASK_ID, run_id=run.run_id)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    node_ids = list(nodes)
    grid.push_messages([grid.create_message(RecordDict({"config": ConfigRecord({"n": n})}), "train",
                                            node_ids[index], group_id="1")
                        for n, index in enumerate(messages_to)])
    return state, nodes


def flower_sweep(state, nodes) -> list:
    """One pass of Flower's own loop body: each node's next message, in node order."""
    return [message for node_id in nodes for message in state.get_message_ins(node_id=node_id, limit=1)]


def handed_out(messages) -> list[tuple[int, int]]:
    return [(message.metadata.dst_node_id, message.content["config"]["n"]) for message in messages]


@pytest.mark.parametrize("messages_to", [[0, 1, 2, 3, 4], [4, 2, 0, 2, 4, 4], [], [3]])
def test_a_sweep_hands_out_what_flowers_loop_hands_out(messages_to):
    ours, nodes = state_with_messages(5, messages_to)
    theirs, their_nodes = state_with_messages(5, messages_to)
    order = {node_id: position for position, node_id in enumerate(nodes)}
    for _ in range(4):  # a node with several messages gets one per sweep, in both
        ours_out = vce_queue.sweep(ours, order)
        theirs_out = flower_sweep(theirs, their_nodes)
        positions = {node_id: i for i, node_id in enumerate(their_nodes)}
        assert [(order[node], n) for node, n in handed_out(ours_out)] == \
               [(positions[node], n) for node, n in handed_out(theirs_out)]
        assert all(message.metadata.delivered_at for message in ours_out)
    assert vce_queue.sweep(ours, order) == []


def test_the_engine_loop_queues_each_message_once():
    state, nodes = state_with_messages(3, [0, 1, 2, 1])
    queue, stop = Queue(), threading.Event()
    loop = threading.Thread(target=vce_queue.add_messages_to_queue, args=(state, queue, nodes, stop))
    loop.start()
    received = [queue.get(timeout=5) for _ in range(4)]
    stop.set()
    loop.join(timeout=5)
    assert sorted(message.content["config"]["n"] for message in received) == [0, 1, 2, 3]
    assert queue.empty()


def test_it_is_installed_only_on_the_flower_version_it_mirrors(monkeypatch):
    from flwr.server.superlink.fleet.vce import vce_api

    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_queue._flower_loop)
    monkeypatch.setattr(vce_queue.flwr, "__version__", "1.42.0")
    assert not vce_queue.install() and vce_api.add_messages_to_queue is vce_queue._flower_loop
    monkeypatch.setattr(vce_queue.flwr, "__version__", "1.41.0")
    assert vce_queue.install() and vce_api.add_messages_to_queue is vce_queue.add_messages_to_queue
