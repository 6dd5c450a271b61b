"""What the GCS refuses before it stores anything (``runtime.gcs.validate``): each bad
field named; what our own processes send passes."""

from __future__ import annotations

import math

import pytest

from runtime.exceptions import InvalidRequestError
from runtime.gcs import validate
from runtime.protocol import common_pb2, gcs_pb2


def _node(**fields: object) -> gcs_pb2.NodeRow:
    row = gcs_pb2.NodeRow(node_id=b"n" * 16, address="10.0.0.7:6381", pid=42, hostname="box",
                          shm_dir="/dev/shm/cellray-x-1234abcd")
    row.load.total["CPU"] = 2.0
    row.load.available["CPU"] = 1.0
    for name, value in fields.items():
        setattr(row, name, value)
    return row


def test_a_node_row_our_nodes_send_passes() -> None:
    validate.check_node_row(_node())


@pytest.mark.parametrize(("fields", "named"), [
    ({"node_id": b"short"}, "node.node_id must be 16 bytes"),
    ({"address": "/.ca"}, "node.address must be 'host:port'"),  # once broke rt.nodes() for everyone
    ({"address": "host:99999"}, "node.address must end in a port 1..65535"),
    ({"address": "host:x"}, "node.address must end in a port"),
    ({"pid": -1}, "node.pid must be >= 0"),
    ({"shm_dir": "x" * 300}, "node.shm_dir is longer than 255"),
])
def test_a_bad_node_row_is_refused_by_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidRequestError, match=named.replace("(", r"\(").replace(".", r"\.")):
        validate.check_node_row(_node(**fields))


@pytest.mark.parametrize(("table", "key", "value", "named"), [
    ("available", "CPU", -1.0, "load.available['CPU'] must be a finite amount >= 0"),
    ("total", "CPU", math.nan, "load.total['CPU'] must be a finite amount >= 0"),
    ("total", "\x00\x01", 1.0, "load.total: names must be 1..255 printable characters"),
])
def test_a_bad_load_is_refused_by_field(table: str, key: str, value: float, named: str) -> None:
    load = common_pb2.NodeLoad()
    getattr(load, table)[key] = value
    with pytest.raises(InvalidRequestError) as err:
        validate.check_load(load)
    assert named in str(err.value)
    negative = common_pb2.NodeLoad(store_spilled=-5)
    with pytest.raises(InvalidRequestError, match="load.store_spilled must be >= 0"):
        validate.check_load(negative)
