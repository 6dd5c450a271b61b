"""Runtime environments on a node: what a worker of a given env starts with.

A task spec's ``runtime_env`` is canonical JSON (``runtime.api._runtime_env``)::

    {"working_dir": <package id>, "py_modules": [<package id>, ...], "env_vars": {...}}

Before the pool starts a worker for it, ``RuntimeEnvs.setup`` makes sure each package is
unpacked under ``<session dir>/runtime_envs/<node>/<package id>`` (downloaded from the GCS
once per node, the first time a worker needs it; concurrent starts share one download,
and other processes unpacking the same package are harmless, see
``runtime._packages.unpack``), and writes the worker's *spec file* beside them (0600, it
holds the env_vars): the env, the paths to put first on ``sys.path`` and, when the env
could not be set up, why. Such a worker still starts and fails each task it is given
with that reason, so a task never waits for a worker that cannot exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime import _packages

logger = logging.getLogger(__name__)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(value: str, environ: Mapping[str, str]) -> str:
    """``value`` with each ``${NAME}`` replaced by ``environ``'s NAME ("" when unset), as Ray
    does for ``env_vars`` (e.g. ``"${PATH}:/opt/bin"``)."""
    return _VAR.sub(lambda m: environ.get(m.group(1), ""), value)


@dataclass(frozen=True)
class WorkerSetup:
    """How to start a worker of one runtime env on this node."""

    #: The file the worker reads its env from (``--runtime-env-file``).
    spec_file: str
    #: Its current directory (the unpacked working_dir), or None: the node's.
    cwd: str | None = None
    #: Directories to put first on its ``sys.path`` (and ``PYTHONPATH``), in order.
    paths: tuple[str, ...] = ()
    #: Its ``env_vars``, not expanded yet.
    env_vars: dict[str, str] = field(default_factory=dict)
    #: Why the env could not be set up ("" when it was).
    error: str = ""

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """The variables to add to ``base`` (the node's environment) for the worker."""
        out = {name: expand(value, base) for name, value in self.env_vars.items()}
        if self.paths:
            old = out.get("PYTHONPATH", base.get("PYTHONPATH", ""))
            out["PYTHONPATH"] = os.pathsep.join([*self.paths, *([old] if old else [])])
        return out


class RuntimeEnvs:
    """The runtime envs of one node: packages fetched from ``gcs`` and unpacked under ``root``."""

    def __init__(self, gcs: _packages.Kv, root: Path) -> None:
        self._gcs = gcs
        self.root = root.absolute()
        #: Downloads and unpacks under way or done, by package id.
        self._packages: dict[str, asyncio.Task[Path]] = {}
        #: Envs set up already, by their JSON.
        self._ready: dict[str, WorkerSetup] = {}

    async def setup(self, text: str) -> WorkerSetup:
        """What a worker of env ``text`` (its JSON) starts with; never raises: a failure is
        the setup's ``error``."""
        done = self._ready.get(text)
        if done is not None:
            return done
        name = hashlib.sha256(text.encode()).hexdigest()[:24]
        spec_file = str(self.root / f"env-{name}.json")
        try:
            env = json.loads(text)
            wd = str(env.get("working_dir", ""))
            mods = [str(m) for m in env.get("py_modules", ())]
            env_vars = {str(k): str(v) for k, v in dict(env.get("env_vars", {})).items()}
            bad = [k for k, v in env_vars.items() if not k or "=" in k or "\0" in k + v]
            if bad:  # checked by the driver already: only a malformed spec gets here
                raise ValueError(f"env_vars {bad!r} cannot be set in an environment")
            dirs = [str(await self._package(p)) for p in [*([wd] if wd else []), *mods]]
            setup = WorkerSetup(spec_file, dirs[0] if wd else None, tuple(dirs), env_vars)
        except Exception as e:  # noqa: BLE001 - any failure is the env's, reported by its worker
            error = (f"the runtime_env of this task could not be set up on node {self.root.name}: "
                     f"{e}")
            logger.error("%s (env %s)", error, text[:200])
            setup = WorkerSetup(spec_file, error=error)
        try:
            self._write_spec(setup, text)
        except OSError as e:
            logger.error("could not write the runtime_env file %s: %s", spec_file, e)
            raise
        if not setup.error:
            self._ready[text] = setup
        return setup

    async def _package(self, package_id: str) -> Path:
        """The directory of package ``package_id``, downloaded and unpacked first if needed."""
        if not re.fullmatch(r"[0-9a-f]{32}", package_id):
            raise ValueError(f"{package_id!r} is not a package id")
        task = self._packages.get(package_id)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.get_running_loop().create_task(self._fetch(package_id))
            self._packages[package_id] = task
        return await asyncio.shield(task)

    async def _fetch(self, package_id: str) -> Path:
        dest = self.root / package_id
        if dest.is_dir():  # unpacked by this node's earlier self (same id, same root)
            return dest
        data = await _packages.download(self._gcs, package_id)
        path = await asyncio.to_thread(_packages.unpack, data, self.root, package_id)
        logger.info("runtime_env package %s unpacked in %s (%d bytes zipped)", package_id, path,
                    len(data))
        return path

    def _write_spec(self, setup: WorkerSetup, text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"runtime_env": text, "paths": list(setup.paths), "error": setup.error})
        tmp = f"{setup.spec_file}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.replace(tmp, setup.spec_file)
