"""Runtime environments on real processes: ``working_dir`` (imports, relative reads, the
worker's current directory), ``py_modules``, ``env_vars``, the job's env from ``init``
and per-task and per-actor overrides merged into it, nested tasks inheriting it, workers
kept apart per env, errors at the call site, and a package fetched by another node.

The first two tests start clusters of their own; the rest share the module's cluster,
whose job env (``cluster_options``) has a working directory made for the module.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

import runtime as rt
from runtime.cluster.local import LocalCluster, NodeSpec
from runtime.exceptions import TaskError
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _working_dir(root: pathlib.Path) -> pathlib.Path:
    """A directory of local code: a module, a data file, and things packaging leaves out."""
    wd = root / "project"
    (wd / "data").mkdir(parents=True)
    (wd / "mymodule.py").write_text("VALUE = 42\n\ndef double(x):\n    return 2 * x\n")
    (wd / "data" / "table.txt").write_text("relative read ok")
    (wd / "debug.log").write_text("left out by excludes")
    (wd / ".git").mkdir()
    (wd / ".git" / "HEAD").write_text("ref: refs/heads/main")
    return wd


@rt.remote
def probe() -> dict[str, Any]:
    """What a task sees of its env."""
    import mymodule  # type: ignore[import-not-found]  # only in the working_dir
    with open("data/table.txt") as f:
        data = f.read()
    return {"value": mymodule.double(mymodule.VALUE), "data": data, "cwd": os.getcwd(),
            "pid": os.getpid(), "node": rt.get_runtime_context().get_node_id(),
            "log": os.path.exists("debug.log"), "git": os.path.exists(".git"),
            "env": {k: v for k, v in os.environ.items() if k.startswith("RTENV_")}}


@rt.remote
def env_of(name: str) -> tuple[int, str | None]:
    return os.getpid(), os.environ.get(name)


# ---- clusters of their own (before the module's cluster starts) -------------------------


def test_init_refuses_a_bad_runtime_env_before_starting_anything(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"runtime_env key 'pip' is not supported by cellray"):
        rt.init(num_cpus=1, runtime_env={"pip": ["requests"]})
    with pytest.raises(FileNotFoundError, match=r"working_dir: '.*missing' does not exist"):
        rt.init(num_cpus=1, runtime_env={"working_dir": str(tmp_path / "missing")})
    assert not rt.is_initialized()


def test_a_task_on_another_node_gets_the_package_from_the_gcs(tmp_path: pathlib.Path) -> None:
    wd = _working_dir(tmp_path)
    cluster = LocalCluster([NodeSpec(num_cpus=1), NodeSpec(num_cpus=1)],
                           session_root=tmp_path / "s").start()
    try:
        info = rt.init(address=cluster.address, token_file=str(cluster.token_file),
                       runtime_env={"working_dir": str(wd), "excludes": ["*.log"]})
        other = next(n["node_id"] for n in cluster.node_info if n["node_id"] != info.node_id)
        there = probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False))
        seen = rt.get(there.remote(), timeout=60)
        assert seen["node"] == other and seen["value"] == 84 and seen["data"] == "relative read ok"
        assert cluster.session_dir is not None
        assert pathlib.Path(seen["cwd"]).parent == cluster.session_dir / "runtime_envs" / other[:12]
        assert not seen["log"] and not seen["git"]
    finally:
        rt.shutdown()
        cluster.stop()


# ---- the module's cluster: the job env has a working_dir and env_vars -------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return _working_dir(tmp_path_factory.mktemp("rtenv"))


@pytest.fixture(scope="module")
def cluster_options(project: pathlib.Path) -> dict[str, Any]:
    return {"num_cpus": 2, "runtime_env": {"working_dir": str(project), "excludes": ["*.log"],
                                           "env_vars": {"RTENV_JOB": "job", "RTENV_BOTH": "job"}}}


def test_tasks_run_in_the_jobs_working_dir_with_its_env_vars(cluster: rt.ClusterInfo) -> None:
    seen = rt.get(probe.remote(), timeout=60)
    assert seen["value"] == 84 and seen["data"] == "relative read ok"
    assert pathlib.Path(seen["cwd"]).is_relative_to(pathlib.Path(cluster.session_dir) / "runtime_envs")
    assert not seen["log"] and not seen["git"]  # excludes, and .git always
    assert seen["env"] == {"RTENV_JOB": "job", "RTENV_BOTH": "job"}


def test_a_tasks_own_env_vars_merge_into_the_jobs(cluster: rt.ClusterInfo) -> None:
    mine = probe.options(runtime_env={"env_vars": {"RTENV_BOTH": "task", "RTENV_TASK": "t"}})
    seen = rt.get(mine.remote(), timeout=60)
    assert seen["env"] == {"RTENV_JOB": "job", "RTENV_BOTH": "task", "RTENV_TASK": "t"}
    assert seen["value"] == 84  # the job's working_dir still applies


def test_py_modules_are_importable(cluster: rt.ClusterInfo, tmp_path: pathlib.Path) -> None:
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("from .inner import NAME\n")
    (tmp_path / "helpers" / "inner.py").write_text("NAME = 'helpers'\n")
    (tmp_path / "single.py").write_text("def hello():\n    return 'single'\n")

    @rt.remote(runtime_env={"py_modules": [str(tmp_path / "helpers"), str(tmp_path / "single.py")]})
    def use() -> str:
        import helpers  # type: ignore[import-not-found]
        import mymodule  # type: ignore[import-not-found]  # the job's working_dir still applies
        import single  # type: ignore[import-not-found]
        return f"{helpers.NAME} {single.hello()} {mymodule.VALUE}"

    assert rt.get(use.remote(), timeout=60) == "helpers single 42"


def test_a_tasks_working_dir_replaces_the_jobs(cluster: rt.ClusterInfo, tmp_path: pathlib.Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "othermodule.py").write_text("X = 'other'\n")

    @rt.remote(runtime_env={"working_dir": str(tmp_path / "other")})
    def use() -> tuple[str, bool]:
        import othermodule  # type: ignore[import-not-found]
        return othermodule.X, os.path.exists("mymodule.py")

    assert rt.get(use.remote(), timeout=60) == ("other", False)


def test_nested_tasks_inherit_their_parents_env(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    def parent() -> tuple[str | None, int]:
        return rt.get(env_of.remote("RTENV_TASK"), timeout=60)[1], rt.get(probe.remote())["value"]

    nested = parent.options(runtime_env={"env_vars": {"RTENV_TASK": "parent's"}})
    assert rt.get(nested.remote(), timeout=60) == ("parent's", 84)


def test_a_worker_of_one_env_never_runs_another(cluster: rt.ClusterInfo) -> None:
    a = env_of.options(runtime_env={"env_vars": {"RTENV_MARK": "a"}})
    b = env_of.options(runtime_env={"env_vars": {"RTENV_MARK": "b"}})
    pids: dict[str | None, set[int]] = {"a": set(), "b": set(), None: set()}
    for _ in range(4):  # one at a time: every worker is idle, and free to be reused, each time
        for f in (a, b, env_of):
            pid, mark = rt.get(f.remote("RTENV_MARK"), timeout=60)
            pids[mark].add(pid)
    assert set(pids) == {"a", "b", None}  # each saw its own env, never another's
    assert not pids["a"] & pids["b"] and not (pids["a"] | pids["b"]) & pids[None]


def test_actors_run_in_the_jobs_env_and_their_own(cluster: rt.ClusterInfo) -> None:
    @rt.remote
    class Reader:
        def read(self) -> tuple[int, str, str | None]:
            import mymodule  # type: ignore[import-not-found]
            with open("data/table.txt") as f:
                return mymodule.VALUE, f.read(), os.environ.get("RTENV_ACTOR")

    plain = Reader.remote()
    assert rt.get(plain.read.remote(), timeout=60) == (42, "relative read ok", None)
    own = Reader.options(runtime_env={"env_vars": {"RTENV_ACTOR": "actor"}}).remote()
    assert rt.get(own.read.remote(), timeout=60) == (42, "relative read ok", "actor")


def test_bad_envs_fail_at_the_call_site(cluster: rt.ClusterInfo, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"runtime_env key 'conda' is not supported"):
        probe.options(runtime_env={"conda": "env"})
    with pytest.raises(ValueError, match=r"key 'pip' is not supported"):
        rt.remote(runtime_env={"pip": ["x"]})(lambda: None)
    with pytest.raises(TypeError, match=r"runtime_env\['env_vars'\]\['N'\] must be a str, got int"):
        probe.options(runtime_env={"env_vars": {"N": 1}})
    missing = probe.options(runtime_env={"working_dir": str(tmp_path / "gone")})
    with pytest.raises(FileNotFoundError, match=r"working_dir: '.*gone' does not exist"):
        missing.remote()
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "weights.bin", "wb") as f:
        f.truncate(101 * 2**20)  # sparse: the size counts, no disk is used
    with pytest.raises(ValueError, match=r".*/big holds 101\.0 MiB of files, over the limit of 100 MiB"):
        probe.options(runtime_env={"working_dir": str(big)}).remote()


def test_an_env_a_node_cannot_set_up_fails_its_task_with_the_reason(cluster: rt.ClusterInfo) -> None:
    # A package id the GCS never got (as after a GCS restart without persistent storage).
    from runtime.api import _context, _runtime_env
    from runtime.api._remote_function import RemoteFunction

    f: RemoteFunction[[str], tuple[int, str | None]] = env_of.options(
        runtime_env={"env_vars": {"RTENV_LOST": "1"}})
    client = _context.current()
    template = f._spec_template(client)
    template.runtime_env = _runtime_env.Resolved(working_dir="f" * 32).text
    template.runtime_env_key = _runtime_env.Resolved(working_dir="f" * 32).key
    for _ in range(2):  # the worker that failed the first exits; a new one tries again
        with pytest.raises(TaskError, match=r"could not be set up on node .*is not in the GCS") as info:
            rt.get(f.remote("RTENV_LOST"), timeout=60)
        assert isinstance(info.value, RuntimeError)


@pytest.fixture(autouse=True)
def _no_cluster_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "cluster" not in request.fixturenames:
        assert not rt.is_initialized()
