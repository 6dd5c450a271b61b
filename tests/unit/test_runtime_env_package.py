"""Runtime envs without a cluster: packaging (deterministic ids, excludes, the size limit),
checking and merging envs, the GCS round trip through an in-memory kv, unpacking, the
node's worker setup, and the worker table keeping envs apart."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import zipfile
from typing import Any

import pytest

from runtime import _packages
from runtime.api import _runtime_env
from runtime.exceptions import RuntimeEnvSetupError
from runtime.node.runtime_envs import RuntimeEnvs, expand
from runtime.node.workers import WorkerTable


def _tree(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def _names(pkg: _packages.Package) -> list[str]:
    return [e.name for e in pkg.entries if not e.is_dir]


class MemoryKv:
    """The two kv calls of a GcsClient, on a dict."""

    def __init__(self) -> None:
        self.rows: dict[bytes, bytes] = {}
        self.puts = 0

    async def get_entry(self, table: str, key: bytes) -> bytes | None:
        assert table == "kv"
        return self.rows.get(key)

    async def put(self, table: str, key: bytes, value: bytes,
                  only_if_absent: bool = False) -> tuple[bool, bytes]:
        assert table == "kv"
        self.puts += 1
        old = self.rows.get(key, b"")
        self.rows[key] = value
        return True, old


# ---- packaging --------------------------------------------------------------------------


def test_the_same_tree_gets_the_same_id_and_the_same_zip(tmp_path: pathlib.Path) -> None:
    files = {"mod.py": "X = 1\n", "pkg/__init__.py": "", "pkg/data.txt": "hello"}
    a = _packages.package(_tree(tmp_path / "a", files), what="working_dir")
    b = _packages.package(_tree(tmp_path / "b", files), what="working_dir")
    assert a.package_id == b.package_id and len(a.package_id) == 32
    os.utime(tmp_path / "b" / "mod.py", (1, 1))  # times are not content
    assert a.build_zip() == _packages.package(tmp_path / "b", what="working_dir").build_zip()
    (tmp_path / "b" / "mod.py").write_text("X = 2\n")
    assert _packages.package(tmp_path / "b", what="working_dir").package_id != a.package_id


def test_an_executable_bit_changes_the_id(tmp_path: pathlib.Path) -> None:
    root = _tree(tmp_path / "w", {"run.sh": "echo hi\n"})
    before = _packages.package(root, what="working_dir").package_id
    (root / "run.sh").chmod(0o755)
    assert _packages.package(root, what="working_dir").package_id != before


def test_git_pycache_and_excludes_are_left_out(tmp_path: pathlib.Path) -> None:
    root = _tree(tmp_path / "w", {
        "main.py": "", ".git/HEAD": "ref", "pkg/__pycache__/m.cpython-311.pyc": "",
        "run.log": "", "pkg/deep/run.log": "", "pkg/keep.log": "", "data/big.bin": "",
        "sub/data/inner.txt": "", "build/x/tmp/y.o": "", "notes.txt": ""})
    pkg = _packages.package(root, what="working_dir",
                            excludes=["*.log", "!pkg/keep.log", "/data/", "build/**/tmp", "# a comment"])
    assert _names(pkg) == ["main.py", "notes.txt", "pkg/keep.log", "sub/data/inner.txt"]
    assert all(not e.name.startswith((".git", "data", "build/x/tmp")) for e in pkg.entries)
    plain = _packages.package(root, what="working_dir")
    assert pkg.package_id != plain.package_id
    assert ".git/HEAD" not in _names(plain) and "run.log" in _names(plain)


@pytest.mark.parametrize("pattern, path, is_dir, excluded", [
    ("*.py", "a/b/c.py", False, True),
    ("/c.py", "a/c.py", False, False),
    ("/c.py", "c.py", False, True),
    ("logs/", "logs", False, False),   # a file named like a directory pattern stays
    ("logs/", "x/logs", True, True),
    ("a/*/c", "a/b/c", False, True),
    ("a/*/c", "a/b/d/c", False, False),
    ("a/**/c", "a/b/d/c", False, True),
    ("**/c", "c", False, True),
    ("file?.txt", "file1.txt", False, True),
    ("file[0-3].txt", "file7.txt", False, False),
])
def test_exclude_patterns_follow_gitignore(pattern: str, path: str, is_dir: bool,
                                           excluded: bool) -> None:
    assert _packages.excluder([pattern])(path, is_dir) is excluded


def test_a_tree_over_the_limit_is_refused_naming_it_its_size_and_the_limit(tmp_path: pathlib.Path) -> None:
    root = _tree(tmp_path / "w", {"small.py": "x"})
    with open(root / "big.bin", "wb") as f:
        f.truncate(3 * 2**20)
    with pytest.raises(ValueError, match=r"runtime_env working_dir: .*/w holds 3\.0 MiB of files, over "
                                         r"the limit of 2 MiB.*big\.bin \(3\.0 MiB\).*excludes"):
        _packages.package(root, what="working_dir", limit=2 * 2**20)
    assert _packages.package(root, what="working_dir", excludes=["*.bin"], limit=2 * 2**20).size == 1


def test_the_default_limit_is_100_mib(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    with open(root / "sparse.bin", "wb") as f:  # sparse: no disk is used, the size counts
        f.truncate(101 * 2**20)
    with pytest.raises(ValueError, match=r"101\.0 MiB of files, over the limit of 100 MiB"):
        _packages.package(root, what="working_dir")


def test_bad_paths_are_named(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"working_dir: '.*nowhere' does not exist"):
        _packages.package(tmp_path / "nowhere", what="working_dir")
    (tmp_path / "f.py").write_text("")
    (tmp_path / "f.txt").write_text("")
    with pytest.raises(NotADirectoryError, match=r"working_dir: '.*f\.py' is a file, not a directory"):
        _packages.package(tmp_path / "f.py", what="working_dir")
    with pytest.raises(ValueError, match=r"py_modules\[0\]: '.*f\.txt' is neither a directory nor"):
        _packages.package(tmp_path / "f.txt", what="py_modules[0]", module=True)


def test_py_modules_go_in_under_their_own_name(tmp_path: pathlib.Path) -> None:
    _tree(tmp_path, {"mypkg/__init__.py": "", "mypkg/sub.py": "", "single.py": ""})
    assert _names(_packages.package(tmp_path / "mypkg", what="m", module=True)) == [
        "mypkg/__init__.py", "mypkg/sub.py"]
    assert _names(_packages.package(tmp_path / "single.py", what="m", module=True)) == ["single.py"]


def test_a_file_changed_after_the_scan_is_caught_when_zipping(tmp_path: pathlib.Path) -> None:
    root = _tree(tmp_path / "w", {"a.py": "1"})
    pkg = _packages.package(root, what="working_dir")
    (root / "a.py").write_text("2")
    with pytest.raises(RuntimeError, match="changed while it was being packaged"):
        pkg.build_zip()


# ---- the GCS round trip and unpacking ---------------------------------------------------


def test_upload_once_then_download_and_unpack(tmp_path: pathlib.Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_packages, "CHUNK", 7)  # several chunks
    root = _tree(tmp_path / "w", {"mod.py": "VALUE = 42\n" * 5, "run.sh": "#!/bin/sh\n"})
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    pkg = _packages.package(root, what="working_dir")
    kv = MemoryKv()
    assert asyncio.run(_packages.upload(kv, pkg)) is True
    puts = kv.puts
    assert puts > 3
    assert asyncio.run(_packages.upload(kv, pkg)) is False and kv.puts == puts  # there already
    data = asyncio.run(_packages.download(kv, pkg.package_id))
    dest = _packages.unpack(data, tmp_path / "envs", pkg.package_id)
    assert dest == tmp_path / "envs" / pkg.package_id
    assert (dest / "mod.py").read_text() == "VALUE = 42\n" * 5
    assert os.access(dest / "run.sh", os.X_OK) and (dest / "empty").is_dir()
    assert _packages.unpack(b"not even a zip", tmp_path / "envs", pkg.package_id) == dest  # once
    assert [p.name for p in (tmp_path / "envs").iterdir()] == [pkg.package_id]  # no leftovers


def test_download_of_a_missing_or_damaged_package_says_so(tmp_path: pathlib.Path) -> None:
    kv = MemoryKv()
    with pytest.raises(RuntimeEnvSetupError, match="is not in the GCS"):
        asyncio.run(_packages.download(kv, "0" * 32))
    pkg = _packages.package(_tree(tmp_path / "w", {"a.py": "a"}), what="working_dir")
    asyncio.run(_packages.upload(kv, pkg))
    chunk = next(k for k in kv.rows if k.count(b":") == 3)
    kv.rows[chunk] = b"x"
    with pytest.raises(RuntimeEnvSetupError, match="do not match its manifest"):
        asyncio.run(_packages.download(kv, pkg.package_id))


def test_unpack_refuses_paths_that_leave_the_directory(tmp_path: pathlib.Path) -> None:
    buf = tmp_path / "evil.zip"
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.py", "x")
    with pytest.raises(RuntimeEnvSetupError, match="unsafe path"):
        _packages.unpack(buf.read_bytes(), tmp_path / "envs", "1" * 32)
    assert not (tmp_path / "escape.py").exists()
    assert not list((tmp_path / "envs").iterdir())


# ---- checking and merging envs ----------------------------------------------------------


@pytest.mark.parametrize("env, error, match", [
    ({"pip": ["requests"]}, ValueError, (r"runtime_env key 'pip' is not supported by cellray; the "
                                         r"supported keys are working_dir, py_modules, env_vars, "
                                         r"excludes\. Instead, install")),
    ({"container": {}}, ValueError, "key 'container' is not supported"),
    ("dir", TypeError, "runtime_env must be a dict"),
    ({"env_vars": {"A": 1}}, TypeError, r"runtime_env\['env_vars'\]\['A'\] must be a str, got int"),
    ({"env_vars": {3: "x"}}, TypeError, r"the name 3 is not a valid environment variable name"),
    ({"env_vars": ["A"]}, TypeError, r"env_vars'\] must be a dict"),
    ({"py_modules": "m"}, TypeError, r"py_modules'\] must be a list"),
    ({"py_modules": [3]}, TypeError, r"py_modules'\]\[0\] must be a local path or an imported module"),
    ({"working_dir": 3}, TypeError, r"working_dir'\] must be a path"),
    ({"excludes": "*.log"}, TypeError, r"excludes'\] must be a list"),
])
def test_bad_envs_are_refused_naming_the_key(env: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _runtime_env.check(env)


def test_envs_merge_as_in_ray(tmp_path: pathlib.Path) -> None:
    _tree(tmp_path, {"a/x.py": "", "b/y.py": "", "m/__init__.py": ""})
    job = _runtime_env.resolve({"working_dir": str(tmp_path / "a"), "py_modules": [str(tmp_path / "m")],
                                "env_vars": {"A": "1", "B": "job"}})
    assert [p.source for p in job.packages] == [str(tmp_path / "a"), str(tmp_path / "m")]
    task = _runtime_env.resolve({"working_dir": str(tmp_path / "b"), "env_vars": {"B": "task"}}, job)
    assert task.working_dir != job.working_dir and task.py_modules == job.py_modules
    assert dict(task.env_vars) == {"A": "1", "B": "task"}
    assert [p.source for p in task.packages] == [str(tmp_path / "b")]  # only what it made
    assert _runtime_env.resolve(None, job) is job and _runtime_env.resolve({}, job) is job
    assert _runtime_env.from_text(task.text) == _runtime_env.Resolved(
        task.working_dir, task.py_modules, task.env_vars)
    assert _runtime_env.from_text(task.text).key == task.key != job.key
    assert _runtime_env.EMPTY.key == "" and _runtime_env.resolve({"env_vars": {}}).key == ""


def test_a_module_object_is_packaged_from_its_file(tmp_path: pathlib.Path) -> None:
    import json as json_module  # a package: its directory
    import string  # a single module: its file
    env = _runtime_env.resolve({"py_modules": [string, json_module]})
    assert [p.source for p in env.packages] == [string.__file__, os.path.dirname(json_module.__file__)]


# ---- the node side ----------------------------------------------------------------------


def test_the_node_sets_up_a_worker_from_the_gcs(tmp_path: pathlib.Path) -> None:
    kv = MemoryKv()
    _tree(tmp_path, {"w/mod.py": "", "m/mm/__init__.py": ""})
    env = _runtime_env.resolve({"working_dir": str(tmp_path / "w"), "py_modules": [str(tmp_path / "m/mm")],
                                "env_vars": {"MODE": "x", "P": "${HOME_X}:/opt"}})
    for pkg in env.packages:
        asyncio.run(_packages.upload(kv, pkg))
    envs = RuntimeEnvs(kv, tmp_path / "node")

    async def twice() -> list[Any]:
        return list(await asyncio.gather(envs.setup(env.text), envs.setup(env.text)))

    a, b = asyncio.run(twice())
    assert a == b and not a.error
    assert a.cwd == str(tmp_path / "node" / env.working_dir)
    assert (pathlib.Path(a.cwd) / "mod.py").exists()
    assert (pathlib.Path(a.paths[1]) / "mm" / "__init__.py").exists()
    environ = a.environ({"HOME_X": "/h", "PYTHONPATH": "/old"})
    assert environ == {"MODE": "x", "P": "/h:/opt", "PYTHONPATH": os.pathsep.join([*a.paths, "/old"])}
    spec = json.loads(pathlib.Path(a.spec_file).read_text())
    assert spec == {"runtime_env": env.text, "paths": list(a.paths), "error": ""}
    assert pathlib.Path(a.spec_file).stat().st_mode & 0o777 == 0o600


def test_a_package_the_gcs_lacks_is_the_setup_error(tmp_path: pathlib.Path) -> None:
    env = _runtime_env.Resolved(working_dir="a" * 32)
    setup = asyncio.run(RuntimeEnvs(MemoryKv(), tmp_path / "node").setup(env.text))
    assert "could not be set up on node node" in setup.error and "is not in the GCS" in setup.error
    assert json.loads(pathlib.Path(setup.spec_file).read_text())["error"] == setup.error


def test_expand_reads_the_node_environment() -> None:
    assert expand("${A}:${MISSING}:$B", {"A": "1", "B": "2"}) == "1::$B"


# ---- the worker table -------------------------------------------------------------------


def test_idle_workers_are_handed_out_only_to_their_own_env() -> None:
    wt = WorkerTable(max_starting=4, pipeline_depth=2, clock=lambda: 0.0)
    wt.asked("envA")
    wt.started(b"a" * 16, counted=True, env_key="envA")
    wt.started(b"p" * 16, counted=False)
    assert wt.starting == 2 and wt.to_start(3, "envA") == 2 and wt.to_start(3) == 2
    wt.connected(b"a" * 16, 1, b"A" * 16)
    wt.connected(b"p" * 16, 2, b"P" * 16)
    assert wt.starting == 0 and wt.to_start(3, "envA") == 3
    assert wt.pop_idle("cpu", "envB") is None
    assert wt.pop_idle("cpu") is wt.get(b"p" * 16)
    assert wt.pop_idle("cpu") is None
    assert wt.pop_idle("cpu", "envA") is wt.get(b"a" * 16)


# ---- the node's state: a task of an env waits for a worker of its env -------------------


class _Store:
    """The node's store, reduced to what LocalScheduler calls here."""

    def seal(self, oid: bytes, size: int) -> None: ...
    def locate(self, oid: bytes) -> str:
        return "/shm/" + oid.hex()
    def pin(self, oid: bytes) -> None: ...
    def unpin(self, oid: bytes) -> None: ...
    def free(self, oid: bytes) -> None: ...


def test_the_node_starts_a_worker_for_an_env_and_runs_plain_tasks_meanwhile() -> None:
    from runtime.config import Settings
    from runtime.node.actions import Send, StartWorker
    from runtime.node.state import LocalScheduler
    from runtime.protocol import codec, common_pb2

    driver = b"D" * 16
    s = LocalScheduler(b"N" * 16, {"CPU": 2.0}, _Store(),
                       lambda e: codec.serialize(e, error=True).to_bytes(), settings=Settings(),
                       clock=lambda: 0.0)
    s.connect(driver, "driver", 1)
    s.worker_starting(b"p" * 16, counted=False)
    s.connect(b"P" * 16, "worker", 10, b"p" * 16)
    s.take_actions()
    env = _runtime_env.Resolved(env_vars=(("MODE", "x"),))

    def spec(i: int, with_env: bool) -> common_pb2.TaskSpec:
        t = common_pb2.TaskSpec(task_id=bytes([i]) * 16, name="f", num_returns=1, owner_id=driver,
                                function_id=b"fn" * 10)
        t.resources["CPU"] = 1.0
        if with_env:
            t.runtime_env_key, t.runtime_env = env.key, env.text
        return t

    def sent() -> dict[bytes, list[bytes]]:
        out: dict[bytes, list[bytes]] = {}
        for a in s.take_actions():
            if isinstance(a, Send) and a.op.WhichOneof("op") == "execute":
                out.setdefault(a.client_id, []).append(a.op.execute.spec.task_id)
            elif isinstance(a, StartWorker):
                out.setdefault(b"start", []).append(f"{a.env_key}|{a.runtime_env}".encode())
        return out

    s.submit(driver, spec(1, True))
    assert sent() == {b"start": [f"{env.key}|{env.text}".encode()]}  # not the plain idle worker
    s.submit(driver, spec(2, False))
    assert sent() == {b"P" * 16: [bytes([2]) * 16]}  # a plain task is not held up behind it
    s.worker_starting(b"e" * 16, counted=True, env_key=env.key)
    s.connect(b"E" * 16, "worker", 11, b"e" * 16)
    assert sent() == {b"E" * 16: [bytes([1]) * 16]}
