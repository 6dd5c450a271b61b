"""Security by default on real processes: the cluster token guards every RPC of the GCS
and the node manager, servers bind loopback only, the token file is private, and
malformed requests get an error status without harming the server."""

from __future__ import annotations

import ipaddress
import os
import pathlib
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import grpc
import psutil
import pytest

import runtime as rt
from runtime import _session
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.protocol import gcs_pb2, node_pb2
from runtime.rpc.interceptors import TOKEN_KEY

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _methods(module: Any) -> list[tuple[str, Any]]:
    """``(path, method descriptor)`` of every RPC the generated module declares."""
    out = []
    for service in module.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            out.append((f"/{service.full_name}/{method.name}", method))
    # Shutdown last: if the token check let it through, the other checks still ran.
    return sorted(out, key=lambda m: m[1].name == "Shutdown")


def _call(channel: grpc.Channel, path: str, method: Any, body: bytes,
          metadata: tuple[tuple[str, str], ...] | None) -> None:
    """Call ``path`` with the raw request ``body``; raise grpc.RpcError on an error status."""
    kw = {"metadata": metadata, "timeout": 10}
    if method.client_streaming and method.server_streaming:
        list(channel.stream_stream(path)(iter([body]), **kw))
    elif method.client_streaming:
        channel.stream_unary(path)(iter([body]), **kw)
    elif method.server_streaming:
        for _ in channel.unary_stream(path)(body, **kw):
            break  # Subscribe streams forever once it answered
    else:
        channel.unary_unary(path)(body, **kw)


def _status(channel: grpc.Channel, path: str, method: Any, body: bytes,
            metadata: tuple[tuple[str, str], ...] | None) -> grpc.StatusCode:
    try:
        _call(channel, path, method, body, metadata)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


# ---- attaching in this process with a bad token (before the shared cluster) -----------

@pytest.fixture
def local_cluster(tmp_session_root: pathlib.Path) -> Iterator[LocalCluster]:
    with LocalCluster([NodeSpec(num_cpus=1)], session_root=tmp_session_root) as c:
        yield c


def test_attach_with_a_wrong_or_missing_token_file(local_cluster: LocalCluster,
                                                   tmp_path: pathlib.Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text(secrets.token_hex(32))
    with pytest.raises(PermissionError, match="token_file"):
        rt.init(address=local_cluster.address, token_file=str(wrong))
    assert not rt.is_initialized()
    with pytest.raises(FileNotFoundError, match="token file"):
        rt.init(address=local_cluster.address, token_file=str(tmp_path / "no-such-file"))
    assert not rt.is_initialized()
    # The failures left nothing behind: the right token works in the same process.
    rt.init(address=local_cluster.address, token_file=str(local_cluster.token_file))
    try:
        assert rt.get(rt.remote(lambda: "ok").remote(), timeout=30) == "ok"
    finally:
        rt.shutdown()


# ---- the shared cluster ----------------------------------------------------------------

@pytest.fixture(scope="module")
def addresses(cluster: rt.ClusterInfo) -> dict[str, str]:
    (node,) = rt.nodes()
    return {"gcs": cluster.address,
            "node": f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"}


@pytest.fixture(scope="module")
def token(cluster: rt.ClusterInfo) -> str:
    return _session.read_token(cluster.token_file)


SERVERS = [("gcs", gcs_pb2), ("node", node_pb2)]


@pytest.mark.parametrize("server, module", SERVERS)
@pytest.mark.parametrize("metadata", [None, ((TOKEN_KEY, "wrong"),), (("authorization", "x"),)],
                         ids=["missing", "wrong", "other-header"])
def test_every_method_rejects_a_missing_or_wrong_token(
        addresses: dict[str, str], server: str, module: Any,
        metadata: tuple[tuple[str, str], ...] | None) -> None:
    methods = _methods(module)
    assert len(methods) >= 4
    with grpc.insecure_channel(addresses[server]) as channel:
        for path, method in methods:
            try:
                _call(channel, path, method, b"", metadata)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (path, e.code(), e.details())
                assert "token" in (e.details() or "") and "token_file" in (e.details() or ""), path
            else:
                pytest.fail(f"{path} answered without the cluster token")
    assert rt.get(rt.remote(lambda: 1).remote(), timeout=30) == 1


@pytest.mark.parametrize("server, module", SERVERS)
def test_malformed_requests_get_an_error_and_the_server_keeps_serving(
        addresses: dict[str, str], token: str, server: str, module: Any,
        our_cluster_pids: Callable[[], dict[str, list[int]]]) -> None:
    before = our_cluster_pids()
    md = ((TOKEN_KEY, token),)
    with grpc.insecure_channel(addresses[server]) as channel:
        for path, method in _methods(module):
            if method.name == "Shutdown":
                continue  # a request that did parse would stop the shared cluster
            code = _status(channel, path, method, b"\xff\xff", md)
            assert code not in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED), (path, code)
    after = our_cluster_pids()
    assert after["gcs"] == before["gcs"] and after["node"] == before["node"]
    assert rt.get([rt.remote(lambda i: i * 2).remote(i) for i in range(4)], timeout=30) == [0, 2, 4, 6]
    assert rt.nodes()[0]["Alive"]


@pytest.mark.parametrize("server, module", SERVERS)
def test_empty_requests_get_a_clear_status(addresses: dict[str, str], token: str, server: str,
                                           module: Any) -> None:
    """Well-formed but empty messages: answered, never an unhandled server error."""
    md = ((TOKEN_KEY, token),)
    harmful = {"Shutdown", "RegisterNode", "UnregisterNode", "Heartbeat"}  # would change the cluster
    with grpc.insecure_channel(addresses[server]) as channel:
        for path, method in _methods(module):
            if method.name in harmful:
                continue
            try:
                _call(channel, path, method, b"", md)
            except grpc.RpcError as e:
                assert e.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAUTHENTICATED), (
                    path, e.code(), e.details())
    assert rt.get(rt.remote(lambda: 3).remote(), timeout=30) == 3


def test_servers_bind_loopback_only(cluster: rt.ClusterInfo,
                                    our_cluster_pids: Callable[[], dict[str, list[int]]]) -> None:
    pids = our_cluster_pids()
    assert pids["gcs"] and pids["node"]
    for kind, kind_pids in pids.items():
        for pid in kind_pids:
            listening = [c for c in psutil.Process(pid).net_connections(kind="inet")
                         if c.status == psutil.CONN_LISTEN]
            if kind in ("gcs", "node"):
                assert listening, f"the {kind} (pid {pid}) listens on no port"
            for c in listening:
                ip = ipaddress.ip_address(c.laddr.ip)
                ip = getattr(ip, "ipv4_mapped", None) or ip  # gRPC binds ::ffff:127.0.0.1
                assert ip.is_loopback, f"{kind} pid {pid} listens on {c.laddr}"


def test_token_file_is_private_and_long(cluster: rt.ClusterInfo) -> None:
    path = pathlib.Path(cluster.token_file)
    assert path.parent == pathlib.Path(cluster.session_dir)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600, oct(mode)
    token = _session.read_token(path)
    assert len(bytes.fromhex(token)) * 8 >= 128
    assert len(set(token)) > 4, "the token does not look random"
