"""The in-process engine: every hospital's ClientApp called in this process, one message at a time.

The same ServerApp logic (`run_federated`) and the same ClientApp, mods included, as under Flower's
Simulation Engine, but no Ray cluster, no actor processes and no polling: for debugging (breakpoints
and tracebacks work) and for small federations, where starting Ray costs more than the training. A
hospital's exception becomes an error reply, as Flower's engines make it, so fault handling is the same.
It uses one CPU thread per hospital like the Ray engine (`simulation.client_cpus`), runs hospitals one
after another, and cannot share GPUs between hospitals (`simulation.client_gpus` must be 0).
"""

import logging
import time
import traceback
from collections.abc import Iterable
from uuid import uuid4

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)

SERVER_NODE_ID = 1  # Flower's SuperLink node id: what replies are addressed to
CLIENT_APP_RAISED_EXCEPTION = 2  # Flower's ErrorCode for a ClientApp that raised
FIRST_NODE_ID = 1000  # hospitals' node ids: FIRST_NODE_ID + partition id (Flower draws random ones)


class LocalGrid(Grid):
    """A Grid whose nodes are `num_nodes` simulated hospitals on this machine (`partition-id` 0..n-1, as in
    Flower's simulation), each with its `Context`, kept here across rounds as Flower's engine keeps it.
    Subclasses say how a message reaches a hospital (`push_messages`) and its reply comes back."""

    def __init__(self, num_nodes: int, run_id: int = 1) -> None:
        self.run_id = run_id
        self.contexts = {
            FIRST_NODE_ID + partition: Context(run_id=run_id, node_id=FIRST_NODE_ID + partition,
                                               node_config={"partition-id": partition, "num-partitions": num_nodes},
                                               state=RecordDict(), run_config={})
            for partition in range(num_nodes)
        }
        self.replies: dict[str, Message] = {}

    @property
    def run(self):  # Flower's Run record; nothing in fedmm reads it
        raise NotImplementedError(f"{type(self).__name__} has no Flower Run record")

    def set_run(self, run_id: int) -> None:
        self.run_id = run_id

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self):
        raise NotImplementedError(f"{type(self).__name__} lists node ids only (get_node_ids)")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(message_id) for message_id in message_ids if message_id in self.replies]


class InProcessGrid(LocalGrid):
    """A LocalGrid that calls each hospital's ClientApp in this process, one message at a time."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = 1) -> None:
        super().__init__(num_nodes, run_id)
        self.client_app = client_app

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message now and keep its reply for `pull_messages`."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid4().hex
            self.replies[message.metadata.message_id] = self.deliver(message)
            ids.append(message.metadata.message_id)
        return ids

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def deliver(self, message: Message) -> Message:
        """The hospital's reply: its ClientApp's answer, or an error reply carrying the traceback."""
        context = self.contexts[message.metadata.dst_node_id]
        message.metadata.__dict__["_delivered_at"] = str(time.time())
        try:
            reply = self.client_app(message, context)
        except Exception as error:  # as Flower's engines do: the server sees an error reply
            log.error("hospital %s raised while handling %s:\n%s", context.node_config["partition-id"],
                      message.metadata.message_type, traceback.format_exc())
            reply = Message(Error(CLIENT_APP_RAISED_EXCEPTION, f"{type(error).__name__}: {error}"), reply_to=message)
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        return reply


def run_in_process(server_main, client_app: ClientApp, num_nodes: int) -> None:
    """Run `server_main(grid)` against `num_nodes` in-process hospitals; Flower's task identity is this
    process's for the run (Messages read it), and torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    identity = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SERVER_NODE_ID
    try:
        server_main(InProcessGrid(client_app, num_nodes))
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = identity
        torch.set_num_threads(threads)
