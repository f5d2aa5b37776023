"""A Grid that hands each reply to the strategy as it arrives, not only all of them at the round's end.

Flower's grids collect a round's replies and return them together; a strategy that averages can instead
add each one to its running sum as it comes (`HospitalFedAvg.on_reply`) and drop its arrays, so the
server holds a few hospitals' models at a time, not one per sampled hospital. The round's semantics
are Flower's `send_and_receive`: push every message, pull until every reply is in or `timeout` passes.
"""

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

PULL_INTERVAL_S = 0.1  # as Flower's in-memory grid


class FoldingGrid(Grid):
    """`grid`, with `on_reply(reply)` applied to every reply of `send_and_receive` on arrival."""

    def __init__(self, grid: Grid, on_reply: Callable[[Message], Message]) -> None:
        self.grid, self.on_reply = grid, on_reply

    @property
    def run(self):
        return self.grid.run

    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting and (deadline is None or time.monotonic() < deadline):
            for reply in self.grid.pull_messages(waiting):
                waiting.discard(reply.metadata.reply_to_message_id)
                replies.append(self.on_reply(reply))
            if waiting:
                time.sleep(PULL_INTERVAL_S)
        return replies
