"""A linear-time message sweep for Flower 1.41's Simulation Engine.

Flower's engine moves messages from its in-memory LinkState to the Ray actors in a loop
(`flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`): every 0.1 s it asks the state for
each node's next message, and each of those calls (`InMemoryLinkState.get_message_ins`) re-checks
every stored message under the state's lock. One sweep costs nodes × stored messages checks, so with
N hospitals it is quadratic: at 1,000 hospitals a sweep is a million checks, repeated all round long,
holding the lock the replies need and a core the actors need.

`sweep` does the same work in one pass: it finds the undelivered messages of the engine's nodes,
checks those (expiry, federation) exactly as `get_message_ins` does, and hands out at most one per
node per sweep, in node order, marked delivered. `install()` puts it in place of Flower's loop, for
this Flower version only; with any other LinkState the original loop runs.
"""

import threading
from queue import Queue

import flwr
from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

FLOWER_VERSION = "1.41."  # the version whose internals `sweep` mirrors
SWEEP_INTERVAL_S = 0.1  # Flower's own

_flower_loop = vce_api.add_messages_to_queue


def sweep(state: InMemoryLinkState, node_order: dict[int, int]) -> list[Message]:
    """The next undelivered message of each node in `node_order` (node id -> position), in that order,
    marked delivered: what one pass of Flower's loop of `get_message_ins(node, limit=1)` returns."""
    with state.lock:
        pending = [message for message in state.message_ins_store.values()
                   if message.metadata.delivered_at == "" and message.metadata.dst_node_id in node_order]
        if not pending:
            return []
        state._check_stored_messages({message.metadata.message_id for message in pending})  # may delete some
        first: dict[int, Message] = {}
        for message in pending:
            if message.metadata.message_id in state.message_ins_store:
                first.setdefault(message.metadata.dst_node_id, message)
    delivered_at = now().isoformat()
    chosen = sorted(first.values(), key=lambda message: node_order[message.metadata.dst_node_id])
    for message in chosen:
        message.metadata.delivered_at = delivered_at
    return chosen


def add_messages_to_queue(state, queue: Queue, nodes_mapping: dict[int, int], f_stop: threading.Event) -> None:
    """Flower's loop with `sweep`: same interval, same messages, one pass per sweep."""
    if not isinstance(state, InMemoryLinkState):
        return _flower_loop(state, queue, nodes_mapping, f_stop)
    node_order = {node_id: position for position, node_id in enumerate(nodes_mapping)}
    while not f_stop.is_set():
        for message in sweep(state, node_order):
            queue.put(message)
        f_stop.wait(SWEEP_INTERVAL_S)
    return None


def install() -> bool:
    """Use `add_messages_to_queue` in this process's Simulation Engine; False (nothing changed) on a
    Flower version other than the one it was written against."""
    if not flwr.__version__.startswith(FLOWER_VERSION):
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue
    return True
