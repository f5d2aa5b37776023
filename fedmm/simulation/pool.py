"""The pool engine: simulated hospitals as data slices inside a few long-lived worker processes.

As Apple's pfl-research simulates clients: a worker per `simulation.client_cpus` cores (2 on a 2-core
machine) starts once, builds the run's `Workspace` (features, one set of heads) once, and then serves
any hospital's message, since a hospital is only its rows and its `context.state`. The ServerApp logic
(`run_federated`) runs in this process on a `PoolGrid`, and every message goes through the same
ClientApp, mods included, as under Flower's Simulation Engine; what changes is the transport:

- no Ray, no SuperLink, no LinkState: a message and its node's `Context` go to a worker down a pipe, and
  the reply and the updated context come back (this process keeps every node's context, as Flower's
  engine does, so any worker can serve any hospital);
- the arrays a round sends to every hospital cross each pipe once per round, not once per message;
- each worker has a second message queued behind the one it is working on, so it never waits for the
  next.

A hospital's exception becomes an error reply, as Flower's engines make it; a worker that dies fails the
messages it held. Like the in-process engine it shares no GPU between hospitals (`client_gpus` must be 0).
"""

import copy
import logging
import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from uuid import uuid4

from flwr.app import Error, Message, RecordDict

from fedmm.config import ExperimentConfig
from fedmm.simulation.inprocess import CLIENT_APP_RAISED_EXCEPTION, SERVER_NODE_ID, LocalGrid

log = logging.getLogger(__name__)

QUEUED_PER_WORKER = 2  # the message a worker is on, and the next one
WORKER_DIED = 5  # Flower's ErrorCode.UNKNOWN: the process serving the node is gone


def pool_size(cfg: ExperimentConfig) -> int:
    """Workers: as many as `client_cpus`-core hospitals fit on this machine (as Flower sizes its actor
    pool), and no more than there are hospitals."""
    return max(1, min(cfg.scenario.num_hospitals, (os.cpu_count() or 1) // cfg.simulation.client_cpus))


def worker_main(cfg: ExperimentConfig, connection: Connection) -> None:
    """A worker: the ClientApp, built once; then (message, context) in, (reply, context) out, until None.
    A reader thread drains the pipe as tasks come, so the dispatcher's sends never wait for this worker
    to finish the message it is on (both ends sending at once would otherwise deadlock)."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedmm.clients.app import make_client_app

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SERVER_NODE_ID
    tasks: queue.Queue = queue.Queue()

    def read() -> None:
        while True:
            try:
                task = connection.recv()
            except (EOFError, OSError):
                task = None
            tasks.put(task)
            if task is None:
                return

    threading.Thread(target=read, daemon=True).start()
    app = make_client_app(cfg)
    contents: dict[str, RecordDict] = {}  # the broadcast content by token: the latest only
    while (task := tasks.get()) is not None:
        kind, payload = task
        if kind == "content":
            token, content = payload
            contents = {token: content}
            continue
        token, message, context = payload
        message.content = contents[token]
        try:
            reply = app(message, context)
        except Exception as error:  # as Flower's engines do: the server sees an error reply
            log.error("hospital %s raised while handling %s:\n%s", context.node_config["partition-id"],
                      message.metadata.message_type, traceback.format_exc())
            reply = Message(Error(CLIENT_APP_RAISED_EXCEPTION, f"{type(error).__name__}: {error}"), reply_to=message)
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        connection.send((message.metadata.message_id, reply, context))


@dataclass
class Worker:
    process: multiprocessing.Process
    connection: Connection
    queued: deque = field(default_factory=deque)  # message ids it holds
    content_token: str | None = None  # the broadcast content it has
    alive: bool = True


class PoolGrid(LocalGrid):
    """A LocalGrid whose hospitals are served by a pool of `num_workers` worker processes."""

    def __init__(self, cfg: ExperimentConfig, num_nodes: int, num_workers: int, run_id: int = 1) -> None:
        super().__init__(num_nodes, run_id)
        spawn = multiprocessing.get_context("spawn")  # never fork a process that holds torch's thread pools
        self.workers = []
        for _ in range(num_workers):
            parent_end, child_end = spawn.Pipe()
            process = spawn.Process(target=worker_main, args=(cfg, child_end), daemon=True)
            process.start()
            child_end.close()
            self.workers.append(Worker(process, parent_end))
        self.todo: deque[Message] = deque()
        self.messages: dict[str, Message] = {}  # sent, not answered
        self.tokens: deque[tuple[RecordDict, str]] = deque(maxlen=4)
        self.lock = threading.Condition()
        self.closed = False
        self.dispatcher = threading.Thread(target=self._dispatch, name="fedmm-pool", daemon=True)
        self.dispatcher.start()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        with self.lock:
            for message in messages:
                message.metadata.__dict__["_message_id"] = uuid4().hex
                message.metadata.__dict__["_delivered_at"] = str(time.time())
                self.todo.append(message)
                self.messages[message.metadata.message_id] = message
                ids.append(message.metadata.message_id)
            self.lock.notify_all()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self.lock:
            return super().pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        with self.lock:
            while waiting and (deadline is None or time.monotonic() < deadline):
                arrived = [message_id for message_id in waiting if message_id in self.replies]
                for message_id in arrived:
                    replies.append(self.replies.pop(message_id))
                    waiting.discard(message_id)
                if waiting:
                    self.lock.wait(timeout=0.1)
        return replies

    def _dispatch(self) -> None:
        """Keep every worker holding QUEUED_PER_WORKER messages; collect what they send back."""
        while True:
            with self.lock:
                if self.closed:
                    return
                for worker in self.workers:
                    while self.todo and len(worker.queued) < QUEUED_PER_WORKER and worker.alive:
                        self._send(worker, self.todo.popleft())
                if not any(worker.alive for worker in self.workers):
                    self._fail(list(self.todo), "every worker process of the pool died")
                    self.todo.clear()
                busy = [worker.connection for worker in self.workers if worker.queued]
                if not busy:
                    self.lock.wait(timeout=0.1)
                    continue
            for connection in wait(busy, timeout=0.1):
                worker = next(w for w in self.workers if w.connection is connection)
                try:
                    message_id, reply, context = connection.recv()
                except (EOFError, OSError):
                    self._worker_died(worker)
                    continue
                with self.lock:
                    worker.queued.remove(message_id)
                    message = self.messages.pop(message_id)
                    self.contexts[message.metadata.dst_node_id] = context
                    self.replies[message_id] = reply
                    self.lock.notify_all()

    def _send(self, worker: Worker, message: Message) -> None:
        """`message` to `worker`: its content first if the worker lacks it, then the message without it."""
        token = self._token(message.content)
        shell = copy.copy(message)  # the message without its content, which the worker then holds
        shell.__dict__["_content"] = RecordDict()
        try:
            if worker.content_token != token:
                worker.connection.send(("content", (token, message.content)))
                worker.content_token = token
            worker.connection.send(("message", (token, shell, self.contexts[message.metadata.dst_node_id])))
        except OSError:  # the worker is gone: another one takes the message
            self.todo.appendleft(message)
            self._worker_died(worker)
            return
        worker.queued.append(message.metadata.message_id)

    def _token(self, content: RecordDict) -> str:
        """A name for a message content, the same for every message of a round (they share one object).
        The latest few are held here, so their ids cannot be reused by new objects meanwhile."""
        for held, token in self.tokens:
            if held is content:
                return token
        self.tokens.append((content, uuid4().hex))
        return self.tokens[-1][1]

    def _worker_died(self, worker: Worker) -> None:
        with self.lock:
            worker.alive = False
            self._fail([self.messages[message_id] for message_id in worker.queued],
                       "the worker process serving it died")
            worker.queued.clear()

    def _fail(self, messages: list[Message], why: str) -> None:
        for message in messages:
            self.messages.pop(message.metadata.message_id, None)
            reason = f"node {message.metadata.dst_node_id}: {why}"
            self.replies[message.metadata.message_id] = Message(Error(WORKER_DIED, reason), reply_to=message)
        self.lock.notify_all()

    def close(self) -> None:
        with self.lock:
            self.closed = True
        self.dispatcher.join(timeout=5)
        for worker in self.workers:
            try:
                worker.connection.send(None)
            except OSError:
                pass
        for worker in self.workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()


def run_in_pool(server_main, cfg: ExperimentConfig, num_nodes: int) -> None:
    """Run `server_main(grid)` against `num_nodes` hospitals served by a pool of worker processes; Flower's
    task identity is this process's for the run (Messages read it), and the pool is stopped afterwards."""
    from flwr.supercore.task_identity import TaskIdentity

    identity = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SERVER_NODE_ID
    grid = PoolGrid(cfg, num_nodes, pool_size(cfg))
    try:
        server_main(grid)
    finally:
        grid.close()
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = identity
