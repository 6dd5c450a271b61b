"""Namespaces as Ray's (issue 14, point 2): a job without ``init(namespace=...)`` gets an
anonymous one of its own; named actors are isolated between namespaces and reachable with
``namespace=``; tasks and actors run in their job's namespace."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

import runtime as rt
from runtime.cluster.local import LocalCluster, NodeSpec

pytestmark = pytest.mark.cluster

OTHER_DRIVER = """
import json, sys
import runtime as rt
out, address, token_file, namespace = sys.argv[1:5]
rt.init(address=address, token_file=token_file, namespace=namespace or None)

@rt.remote
class Named:
    def who(self):
        return rt.get_runtime_context().namespace

Named.options(name="svc", lifetime="detached").remote()
json.dump({"namespace": rt.get_runtime_context().namespace}, open(out, "w"))
rt.shutdown()
"""


@rt.remote
def lookup_in_a_task() -> str:
    return rt.get(rt.get_actor("svc").who.remote(), timeout=60)


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[LocalCluster]:
    c = LocalCluster([NodeSpec(num_cpus=2)], session_root=tmp_path / "s").start()
    try:
        yield c
    finally:
        rt.shutdown()
        c.stop()


def _other_driver(cluster: LocalCluster, tmp_path: pathlib.Path, env: dict[str, str],
                  namespace: str = "") -> str:
    script, out = tmp_path / "other.py", tmp_path / "other.json"
    script.write_text(OTHER_DRIVER)
    subprocess.run([sys.executable, str(script), str(out), cluster.address, str(cluster.token_file),
                    namespace], check=True, timeout=120, env=env)
    return str(json.loads(out.read_text())["namespace"])


def test_each_job_gets_an_anonymous_namespace_of_its_own(
        cluster: LocalCluster, tmp_path: pathlib.Path,
        subprocess_env: Callable[..., dict[str, str]]) -> None:
    theirs = _other_driver(cluster, tmp_path, subprocess_env())
    rt.init(address=cluster.address, token_file=str(cluster.token_file))
    ours = rt.get_runtime_context().namespace
    assert ours and theirs and ours != theirs
    with pytest.raises(ValueError, match="svc"):
        rt.get_actor("svc")  # not in our namespace
    svc = rt.get_actor("svc", namespace=theirs)
    assert rt.get(svc.who.remote(), timeout=60) == theirs  # it runs in its creator's job's
    rt.kill(svc)


def test_jobs_that_name_a_namespace_share_its_actors_also_from_tasks(
        cluster: LocalCluster, tmp_path: pathlib.Path,
        subprocess_env: Callable[..., dict[str, str]]) -> None:
    assert _other_driver(cluster, tmp_path, subprocess_env(), namespace="team") == "team"
    rt.init(address=cluster.address, token_file=str(cluster.token_file), namespace="team")
    assert rt.get_runtime_context().namespace == "team"
    assert rt.get(rt.get_actor("svc").who.remote(), timeout=60) == "team"
    # A task looks up names in its job's namespace.
    assert rt.get(lookup_in_a_task.remote(), timeout=60) == "team"
    rt.kill(rt.get_actor("svc"))
