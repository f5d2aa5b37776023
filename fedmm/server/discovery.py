"""Map Flower node ids (random each run) to hospital ids (stable), by asking each node once."""

import time

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmm import protocol as keys
from fedmm.data.modality import Availability


def wait_for_nodes(grid: Grid, expected: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(node_ids := list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(node_ids)} of {expected} hospitals connected within {timeout_s:.0f} s; start one node per "
                "hospital (scenario.num_hospitals) or raise federation.round_timeout_s"
            )
        time.sleep(0.2)
    return sorted(node_ids)


def discover_hospitals(grid: Grid, num_hospitals: int, timeout_s: float) -> tuple[dict[int, int], dict[int, dict]]:
    """({hospital id: node id}, {hospital id: its description}); every hospital must answer exactly once."""
    node_ids = wait_for_nodes(grid, num_hospitals, timeout_s)
    queries = [Message(RecordDict({keys.CONFIG: ConfigRecord()}), message_type=MessageType.QUERY, dst_node_id=node)
               for node in node_ids]
    node_of_hospital, descriptions = {}, {}
    for reply in grid.send_and_receive(queries, timeout=timeout_s):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed discovery: {reply.error.reason}")
        description = dict(reply.content[keys.METRICS])
        hospital_id = int(description[keys.HOSPITAL_ID])
        if hospital_id in node_of_hospital:
            raise RuntimeError(f"two nodes claim hospital {hospital_id}; give each node its own partition-id")
        node_of_hospital[hospital_id] = reply.metadata.src_node_id
        descriptions[hospital_id] = description
    missing = sorted(set(range(num_hospitals)) - set(node_of_hospital))
    if missing:
        raise RuntimeError(f"no node answered for hospitals {missing}; each needs a node with that partition-id")
    return node_of_hospital, descriptions


def group_of(description: dict[str, float]) -> Availability:
    """A hospital's modality group from its discovery answer (an `AVAILABILITY_CODES` code)."""
    return list(Availability)[int(description[keys.GROUP])]
