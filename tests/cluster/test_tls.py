"""Mutual TLS on real processes (issue 17): a ``tls=True`` cluster runs tasks, actors and
a 20 MB transfer between two nodes for a driver attached with the join bundle; plaintext
clients, clients without a certificate and clients of another CA are refused in the
handshake; the files are private; a head or node bound off loopback needs TLS or
``--insecure`` (which warns once), and ``cellray start --head --tls`` / ``--bundle`` join
a node and a driver "from another machine" (another ``CELLRAY_TMPDIR``)."""

from __future__ import annotations

import pathlib
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator

import cloudpickle
import grpc
import numpy as np
import pytest

import runtime as rt
from runtime import _session, _tls
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.protocol import gcs_pb2, gcs_pb2_grpc, node_pb2, node_pb2_grpc
from runtime.rpc import security
from runtime.rpc.interceptors import TOKEN_KEY
from tests.cluster.test_cli import CALL_TIMEOUT, free_port, ok, processes_of, run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MB = 1024 * 1024


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("tls-sessions")
    cluster = LocalCluster([NodeSpec(num_cpus=1), NodeSpec(num_cpus=1, resources={"far": 1})],
                           session_root=root, global_schedulers=1, tls=True)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _token(cluster: LocalCluster) -> tuple[tuple[str, str], ...]:
    assert cluster.token_file is not None
    return ((TOKEN_KEY, _session.read_token(cluster.token_file)),)


def _member_channel(cluster: LocalCluster, address: str) -> grpc.Channel:
    """A sync channel with the head's member certificate, as the runtime's would be."""
    assert cluster.session_dir is not None
    identity = _tls.load_dir(_tls.tls_dir_of(cluster.session_dir))
    return grpc.secure_channel(address, identity.channel_credentials(),
                               options=[("grpc.ssl_target_name_override", _tls.CLUSTER_NAME)])


def _node_address(cluster: LocalCluster) -> str:
    return str(cluster.node_info[0]["address"])


def test_a_driver_with_the_bundle_runs_tasks_actors_and_moves_20mb_between_nodes(
        tls_cluster: LocalCluster) -> None:
    assert tls_cluster.bundle is not None
    rt.init(address=tls_cluster.address, bundle=str(tls_cluster.bundle))
    try:
        assert len([n for n in rt.nodes() if n["Alive"]]) == 2
        square = rt.remote(lambda x: x * x)
        assert rt.get([square.remote(i) for i in range(20)]) == [i * i for i in range(20)]

        @rt.remote
        class Counter:
            def __init__(self) -> None:
                self.n = 0

            def add(self, k: int) -> int:
                self.n += k
                return self.n

        counter = Counter.remote()
        assert rt.get([counter.add.remote(1) for _ in range(10)])[-1] == 10

        @rt.remote(resources={"far": 1})
        def make(n: int) -> np.ndarray:
            return np.arange(n, dtype=np.uint8)

        @rt.remote(resources={"far": 1})
        def total(a: np.ndarray) -> int:
            return int(a.sum(dtype=np.int64))

        far = rt.get(make.remote(20 * MB))  # made on the far node, pulled to the driver's
        assert far.nbytes == 20 * MB and int(far[-1]) == (20 * MB - 1) % 256
        here = rt.put(np.ones(20 * MB, dtype=np.uint8))  # the other way
        assert rt.get(total.remote(here)) == 20 * MB
    finally:
        rt.shutdown()


def test_a_plaintext_client_is_refused_and_changes_nothing(tls_cluster: LocalCluster) -> None:
    intruder = gcs_pb2.RegisterJobRequest(job=gcs_pb2.JobRow(driver_pid=4242, driver_host="plaintext"))
    with grpc.insecure_channel(tls_cluster.address) as channel, pytest.raises(grpc.RpcError) as info:
        gcs_pb2_grpc.JobsStub(channel).RegisterJob(intruder, metadata=_token(tls_cluster), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(_node_address(tls_cluster)) as channel, \
            pytest.raises(grpc.RpcError) as info:
        node_pb2_grpc.NodeManagerStub(channel).GetNodeInfo(
            node_pb2.GetNodeInfoRequest(), metadata=_token(tls_cluster), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # A member sees the jobs table without the intruder's job.
    with _member_channel(tls_cluster, tls_cluster.address) as channel:
        reply = gcs_pb2_grpc.TablesStub(channel).ListTable(
            gcs_pb2.ListTableRequest(table="jobs"), metadata=_token(tls_cluster), timeout=10)
    jobs = [gcs_pb2.JobRow.FromString(e.value) for e in reply.entries]
    assert not [j for j in jobs if j.driver_host == "plaintext"]


def _refused(address: str, credentials: grpc.ChannelCredentials,
             metadata: tuple[tuple[str, str], ...]) -> None:
    options = [("grpc.ssl_target_name_override", _tls.CLUSTER_NAME)]
    with grpc.secure_channel(address, credentials, options=options) as channel, \
            pytest.raises(grpc.RpcError) as info:
        gcs_pb2_grpc.TablesStub(channel).ListTable(gcs_pb2.ListTableRequest(table="jobs"),
                                                   metadata=metadata, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value


def test_tls_clients_without_a_certificate_or_of_another_ca_are_refused(tls_cluster: LocalCluster) -> None:
    assert tls_cluster.session_dir is not None
    ca_pem = _tls.load_dir(_tls.tls_dir_of(tls_cluster.session_dir)).ca_pem
    no_cert = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    other_ca = _tls.make_ca()
    stranger = _tls.issue(other_ca, "stranger", ["127.0.0.1"])
    # Trusts the cluster's CA (so the server's certificate checks out) but presents its own.
    foreign = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=stranger.key_pem,
                                           certificate_chain=stranger.cert_pem)
    for address in (tls_cluster.address, _node_address(tls_cluster)):
        _refused(address, no_cert, _token(tls_cluster))
        _refused(address, foreign, _token(tls_cluster))
    # A member's certificate gets through on both.
    with _member_channel(tls_cluster, tls_cluster.address) as channel:
        gcs_pb2_grpc.TablesStub(channel).ListTable(gcs_pb2.ListTableRequest(table="jobs"),
                                                  metadata=_token(tls_cluster), timeout=10)


def test_the_tls_files_and_the_token_are_private(tls_cluster: LocalCluster) -> None:
    assert tls_cluster.session_dir is not None and tls_cluster.token_file is not None
    tls_dir = _tls.tls_dir_of(tls_cluster.session_dir)
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    files = sorted(tls_dir.iterdir())
    assert [f.name for f in files] == ["ca.key", "ca.pem", "join.json", "node.key", "node.pem"]
    for f in [*files, tls_cluster.token_file]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


# ---- binding off loopback ------------------------------------------------------------------

def test_a_local_cluster_off_loopback_without_tls_is_refused_before_it_starts(
        tmp_session_root: pathlib.Path) -> None:
    with pytest.raises(security.InsecureBindError, match=r"refusing to serve 0\.0\.0\.0:0 without TLS"):
        LocalCluster([NodeSpec(num_cpus=1)], host="0.0.0.0", session_root=tmp_session_root)
    assert not list(tmp_session_root.glob("session_*"))


@pytest.fixture
def two_machines(tmp_path: pathlib.Path, subprocess_env: Callable[..., dict[str, str]],
                 ) -> Iterator[tuple[dict[str, str], dict[str, str], pathlib.Path]]:
    """Environments of a "head machine" and an "other machine" (their own session roots);
    ``cellray stop --all`` on both at teardown, the other machine first."""
    head_root = tmp_path / "head"
    head, other = (subprocess_env(CELLRAY_TMPDIR=str(head_root)),
                   subprocess_env(CELLRAY_TMPDIR=str(tmp_path / "other")))
    try:
        yield head, other, head_root
    finally:
        ok(run_cli(other, "stop", "--all"))
        ok(run_cli(head, "stop", "--all"))


def test_the_cli_turns_tls_on_off_loopback_and_warns_once_with_insecure(
        two_machines: tuple[dict[str, str], dict[str, str], pathlib.Path]) -> None:
    env, _, root = two_machines
    # Off loopback without a word about TLS: TLS, safe by default.
    safe = ok(run_cli(env, "start", "--head", "--host", "0.0.0.0", "--port", "0", "--cpus", "1",
                      "--global-schedulers", "1"))
    assert "TLS:         on (mutual); join bundle:" in safe
    ok(run_cli(env, "stop", "--all"))
    assert processes_of(root) == []
    started = run_cli(env, "start", "--head", "--host", "0.0.0.0", "--port", "0", "--cpus", "1",
                      "--global-schedulers", "1", "--insecure")
    ok(started)
    assert started.stderr.count("WITHOUT TLS") == 1, started.stderr
    warning = next(line for line in started.stderr.splitlines() if "WITHOUT TLS" in line)
    assert "0.0.0.0" in warning and "--tls" in warning
    assert "TLS:         off" in started.stdout


DRIVER = """
import sys, runtime as rt
rt.init(address=sys.argv[1], bundle=sys.argv[2])
square = rt.remote(lambda x: x * x)
print("sum", sum(rt.get([square.remote(i) for i in range(10)])))
print("nodes", len([n for n in rt.nodes() if n["Alive"]]))
rt.shutdown()
"""


def test_a_tls_head_joined_by_a_node_and_a_driver_with_its_bundle(
        two_machines: tuple[dict[str, str], dict[str, str], pathlib.Path]) -> None:
    head_env, other_env, head_root = two_machines
    port = free_port()
    # TLS allows the head to listen on every interface without --insecure.
    out = ok(run_cli(head_env, "start", "--head", "--tls", "--host", "0.0.0.0", "--port", str(port),
                     "--cpus", "1", "--global-schedulers", "1"))
    session = (head_root / "session_latest").resolve()
    bundle = _tls.bundle_path(_tls.tls_dir_of(session))
    assert f"join bundle: {bundle}" in out and f'bundle="{bundle}"' in out
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    address = f"127.0.0.1:{port}"

    # Without the bundle, the other machine cannot join, and is told to pass it.
    token = session / "token"
    refused = run_cli(other_env, "start", "--address", address, "--token-file", str(token))
    assert refused.returncode == 1 and "--bundle" in refused.stderr, refused

    added = ok(run_cli(other_env, "start", "--address", address, "--bundle", str(bundle), "--cpus", "1"))
    assert "2 live node(s)" in added
    other_session = (head_root.parent / "other" / "session_latest").resolve()
    for f in _tls.tls_dir_of(other_session).iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert not (_tls.tls_dir_of(other_session) / "ca.key").exists()  # the CA key stays on the head

    driver = subprocess.run([sys.executable, "-c", DRIVER, address, str(bundle)], env=other_env,
                            text=True, capture_output=True, timeout=CALL_TIMEOUT, check=False)
    assert ok(driver).split() == ["sum", "285", "nodes", "2"]
    assert "nodes: 2 alive" in ok(run_cli(other_env, "status", "--address", address, "--bundle", str(bundle)))
