"""Runtime environments on the caller's side: check, resolve, merge, upload, stamp.

A ``runtime_env`` is a dict with Ray's keys (the ones cellray supports)::

    working_dir   a local directory: the workers' current directory, first on sys.path
    py_modules    local package directories, single .py files or imported modules: on sys.path
    env_vars      {name: value} set in the workers' environment before any user code runs
                  (``${NAME}`` in a value is the node's own NAME, "" when unset)
    excludes      gitignore patterns left out of working_dir and py_modules (runtime._packages)

It is *resolved* into a ``Resolved``: each local path becomes a package (zipped and named
by the hash of its content, ``runtime._packages``) uploaded to the GCS once, and the
result is written as canonical JSON whose hash is the env's *key*. Both go in the task
spec (``runtime_env``, ``runtime_env_key``); a node hands a task only to a worker started
for the same key, and starts such workers with the packages unpacked
(``runtime.node.runtime_envs``). No runtime_env is the empty key: the node's plain workers.

Merging is Ray's: the env in force for a call is the caller's own (the job's, from
``init(runtime_env=...)``, in the driver; the worker's, in a task or actor) updated by the
call's: its ``working_dir`` and ``py_modules`` replace the caller's and its ``env_vars``
are added to the caller's (its own win). Nested tasks so inherit their parent's env.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime import _packages

if TYPE_CHECKING:
    from runtime.api._client import CoreClient
    from runtime.protocol import common_pb2

#: The keys of a runtime_env that cellray supports.
SUPPORTED = ("working_dir", "py_modules", "env_vars", "excludes")
#: Ray's keys that cellray does not support, and what to do instead.
_INSTEAD = {
    "pip": "install the packages in the Python environment of every node",
    "uv": "install the packages in the Python environment of every node",
    "conda": "start the nodes from the conda environment you need",
    "container": "start the nodes inside the container you need",
    "image_uri": "start the nodes inside the container you need",
}


@dataclass(frozen=True)
class Resolved:
    """A runtime env with its local paths replaced by package ids (see the module docstring)."""

    #: Package id of the working directory ("" none).
    working_dir: str = ""
    #: Package ids of the py_modules, in the order given.
    py_modules: tuple[str, ...] = ()
    #: Environment variables, sorted by name.
    env_vars: tuple[tuple[str, str], ...] = ()
    #: Packages made by this resolution, to upload before a task uses them (not part of the env).
    packages: tuple[_packages.Package, ...] = ()

    @property
    def text(self) -> str:
        """The canonical JSON of the env ("" for no env): what a task spec carries."""
        d: dict[str, Any] = {}
        if self.working_dir:
            d["working_dir"] = self.working_dir
        if self.py_modules:
            d["py_modules"] = list(self.py_modules)
        if self.env_vars:
            d["env_vars"] = dict(self.env_vars)
        return json.dumps(d, sort_keys=True, separators=(",", ":")) if d else ""

    @property
    def key(self) -> str:
        """The hash of ``text`` that names the env's worker pool ("" for no env)."""
        text = self.text
        return hashlib.sha256(text.encode()).hexdigest()[:32] if text else ""


EMPTY = Resolved()


def from_text(text: str) -> Resolved:
    """The env a task spec (or a worker's start) carries as ``text``."""
    if not text:
        return EMPTY
    d = json.loads(text)
    return Resolved(d.get("working_dir", ""), tuple(d.get("py_modules", ())),
                    tuple(sorted(d.get("env_vars", {}).items())))


def check(env: Any) -> None:
    """Check a ``runtime_env`` value's keys and types (not its paths: ``resolve`` does).

    Raises ``TypeError`` for a value of the wrong type (naming the key, and for env_vars
    the bad name or value) and ``ValueError`` for a key cellray does not support.
    """
    if env is None:
        return
    if not isinstance(env, Mapping):
        raise TypeError(f"runtime_env must be a dict with keys among {', '.join(SUPPORTED)}, got "
                        f"{type(env).__name__}: {env!r}")
    for key in env:
        if key not in SUPPORTED:
            instead = _INSTEAD.get(str(key))
            hint = f" Instead, {instead}." if instead else ""
            raise ValueError(f"runtime_env key {key!r} is not supported by cellray; the supported "
                             f"keys are {', '.join(SUPPORTED)}.{hint}")
    wd = env.get("working_dir")
    if wd is not None and not isinstance(wd, (str, os.PathLike)):
        raise TypeError(f"runtime_env['working_dir'] must be a path to a local directory, got "
                        f"{type(wd).__name__}: {wd!r}")
    mods = env.get("py_modules")
    if mods is not None:
        if not isinstance(mods, (list, tuple)):
            raise TypeError(f"runtime_env['py_modules'] must be a list of local paths or modules, "
                            f"got {type(mods).__name__}: {mods!r}")
        for i, m in enumerate(mods):
            if not isinstance(m, (str, os.PathLike, types.ModuleType)):
                raise TypeError(f"runtime_env['py_modules'][{i}] must be a local path or an "
                                f"imported module, got {type(m).__name__}: {m!r}")
    env_vars = env.get("env_vars")
    if env_vars is not None:
        if not isinstance(env_vars, Mapping):
            raise TypeError(f"runtime_env['env_vars'] must be a dict of str to str, got "
                            f"{type(env_vars).__name__}: {env_vars!r}")
        for name, value in env_vars.items():
            if not isinstance(name, str) or not name or "=" in name or "\0" in name:
                raise TypeError(f"runtime_env['env_vars']: the name {name!r} is not a valid "
                                "environment variable name (a non-empty str without '=')")
            if not isinstance(value, str) or "\0" in value:
                raise TypeError(f"runtime_env['env_vars'][{name!r}] must be a str, got "
                                f"{type(value).__name__}: {value!r}. Environment variables hold "
                                f"text: pass str({value!r}).")
    excludes = env.get("excludes")
    if excludes is not None and (not isinstance(excludes, (list, tuple))
                                 or not all(isinstance(p, str) for p in excludes)):
        raise TypeError(f"runtime_env['excludes'] must be a list of gitignore-style patterns "
                        f"(str), got {excludes!r}")


def _module_path(m: Any) -> Any:
    if not isinstance(m, types.ModuleType):
        return m
    file = getattr(m, "__file__", None)
    if not file:
        raise ValueError(f"runtime_env['py_modules']: module {m.__name__!r} has no file (a "
                         "namespace or built-in module); pass its directory instead")
    return os.path.dirname(file) if hasattr(m, "__path__") else file


def resolve(env: Mapping[str, Any] | None, base: Resolved = EMPTY) -> Resolved:
    """``base`` updated by ``env`` (see the module docstring), its local paths packaged.

    Raises what ``check`` raises, and ``FileNotFoundError``, ``NotADirectoryError`` or
    ``ValueError`` (too large) for a path, naming it (``runtime._packages.package``).
    """
    if not env:
        return base
    check(env)
    excludes = tuple(env.get("excludes") or ())
    made: list[_packages.Package] = []
    working_dir = base.working_dir
    if env.get("working_dir") is not None:
        pkg = _packages.package(env["working_dir"], what="working_dir", excludes=excludes)
        made.append(pkg)
        working_dir = pkg.package_id
    py_modules = base.py_modules
    if env.get("py_modules") is not None:
        mods = [_packages.package(_module_path(m), what=f"py_modules[{i}]", module=True,
                                  excludes=excludes)
                for i, m in enumerate(env["py_modules"])]
        made.extend(mods)
        py_modules = tuple(p.package_id for p in mods)
    env_vars = dict(base.env_vars)
    env_vars.update(env.get("env_vars") or {})
    return Resolved(working_dir, py_modules, tuple(sorted(env_vars.items())), tuple(made))


# ---- the env in force in this process ----------------------------------------------------

#: The env of this process's calls that set none: the job's (``init``) in a driver, the
#: worker's own in a worker.
_default: Resolved = EMPTY
#: (client id, package id) of the packages uploaded through a client already.
_uploaded: set[tuple[bytes, str]] = set()


def default() -> Resolved:
    """The env a call without a runtime_env of its own runs in."""
    return _default


def set_default(env: Resolved) -> None:
    """Set the env of this process's calls (``init`` in a driver, start-up in a worker)."""
    global _default
    _default = env


def upload(client: CoreClient, env: Resolved) -> None:
    """Store the packages ``env`` made in the cluster's GCS, unless there already."""
    for pkg in env.packages:
        if (client.client_id, pkg.package_id) in _uploaded:
            continue
        assert client.gcs is not None
        timeout = client.settings.rpc_timeout_s + pkg.size / 2**22  # + 1 s per 4 MiB
        client.run(_packages.upload(client.gcs, pkg), timeout)
        _uploaded.add((client.client_id, pkg.package_id))


def for_call(client: CoreClient, runtime_env: Mapping[str, Any] | None) -> Resolved:
    """The env of a task or actor submitted with option ``runtime_env`` (None: the
    caller's), its packages uploaded."""
    env = resolve(runtime_env, _default)
    upload(client, env)
    return env


def stamp(spec: common_pb2.TaskSpec, client: CoreClient, runtime_env: Mapping[str, Any] | None) -> None:
    """Put the env of a task or actor creation (see ``for_call``) in its ``spec``."""
    env = for_call(client, runtime_env)
    if env.key:
        spec.runtime_env_key, spec.runtime_env = env.key, env.text
