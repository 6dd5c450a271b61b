"""One start-up and stop for every cluster daemon (``python -m runtime.gcs|scheduler|node|worker``).

A daemon module declares a ``Daemon`` (its name, its own flags) and an async ``main``;
``Daemon.run`` does the rest::

    DAEMON = Daemon("gcs", prog="python -m runtime.gcs", description=__doc__,
                    settings_flags=(SettingFlag("--num-shards", "gcs_shards"),),
                    add_arguments=_arguments)

    async def serve(ctx: DaemonContext) -> int | None:
        service = GcsService(GcsState(num_shards=ctx.settings.gcs_shards))
        server, port = await ctx.serve(service.adders())   # bound, else exit code 1
        ctx.on_stop(service.shutdown_requested.set)         # SIGTERM, SIGINT, parent gone
        ctx.ready(port)                                     # the ready file
        await service.shutdown_requested.wait()
        await service.close()
        await ctx.stop_servers()                            # settings.stop_grace_s
        return 0

    def main(argv: Sequence[str] | None = None) -> int:
        return DAEMON.run(serve, argv)

What ``run`` does, in order:

1. **Flags.** The common ones: ``--token-file`` and ``--session-dir`` (required),
   ``--parent-pid``, ``--log-level``; for a daemon that serves (``serves=True``)
   ``--host`` and ``--port``; ``--ready-file`` unless ``ready_file="absent"``. Then the
   daemon's own (``add_arguments``) and its ``settings_flags``, each of which sets one
   ``Settings`` field. A bad value exits with code 2 and a usage line naming the flag,
   e.g. ``argument --num-shards: must be an integer >= 1, got 0``; so does ``check``.
2. **Settings.** ``config.load()`` (the ``CELLRAY_*`` variables a launcher passes, see
   ``Settings.to_env``) with the settings flags on top, validated.
3. **Logging** to stderr (which the launcher sends to the session's ``logs/``), every line
   with the component name and pid: ``... INFO gcs[4242] runtime.gcs: ...``.
4. **Token** from ``--token-file``; a missing file is logged and exits with code 1.
5. **Parent watch**: with ``--parent-pid``, the daemon SIGTERMs itself (a graceful stop)
   once its parent is gone, checked every ``settings.parent_check_s``.
6. **Signals**: SIGTERM and SIGINT call ``ctx.request_stop()``: ``ctx.stopping`` is set
   and the ``ctx.on_stop`` callbacks run, once.
7. ``main(ctx)``; its return value is the exit code (None: 0). ``DaemonStartError`` (e.g.
   the port is taken) is logged and exits with code 1. The servers ``ctx.serve`` started
   and ``main`` did not stop are stopped with ``settings.stop_grace_s``.

A daemon that runs no event loop (the worker) calls ``Daemon.prepare(argv)`` for steps
1 to 5 and gets the ``DaemonContext``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import psutil

from runtime import _logs, _session, config
from runtime.rpc.security import advertised_host
from runtime.rpc.server import create_server

logger = logging.getLogger("runtime.daemon")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

#: ``(add_XServicer_to_server, servicer)`` pairs, as ``create_server`` takes them.
Adders = Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any]]


class DaemonStartError(RuntimeError):
    """The daemon could not start (its port is taken, ...); logged, exit code 1."""


@dataclass(frozen=True)
class SettingFlag:
    """A command-line flag that sets one ``Settings`` field.

    The flag's text is parsed as the field's type, multiplied by ``scale`` (``0.001``
    for a flag in milliseconds that sets a field in seconds) and checked by the rule of
    ``config.requirement``, so flag and environment variable accept the same values.
    Without the flag the field keeps its value from the environment or its default.
    """

    flag: str
    setting: str
    help: str = ""
    scale: float = 1.0

    def convert(self, text: str) -> Any:
        """The field's value for ``text``; ``argparse.ArgumentTypeError`` says what is wrong."""
        kind = config.kind_of(self.setting)
        try:
            value: Any = kind(text)
        except ValueError:
            noun = {int: "an integer", float: "a number"}.get(kind, "a string")
            raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
        if self.scale != 1.0:
            value = value * self.scale
        wrong = config.requirement(self.setting, value)
        if wrong is not None:
            raise argparse.ArgumentTypeError(f"{wrong}, got {text}")
        return value


@dataclass(frozen=True)
class Daemon:
    """What one daemon adds to the common start-up; ``run`` or ``prepare`` use it.

    ``component`` names the daemon in log lines unless ``log_name`` derives the name from
    the parsed flags (a scheduler replica logs as its ``--name``). ``check`` returns an
    error message for flags that parse but do not fit together, or None.
    """

    component: str
    prog: str
    description: str = ""
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    settings_flags: Sequence[SettingFlag] = ()
    check: Callable[[argparse.Namespace], str | None] | None = None
    log_name: Callable[[argparse.Namespace], str] | None = None
    serves: bool = True
    ready_file: Literal["required", "optional", "absent"] = "required"

    def parser(self) -> argparse.ArgumentParser:
        """The daemon's argument parser: common flags, its own, its settings flags."""
        p = argparse.ArgumentParser(prog=self.prog, description=self.description,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--token-file", required=True, help="file holding the cluster token")
        p.add_argument("--session-dir", required=True, type=pathlib.Path,
                       help="the cluster's session directory")
        p.add_argument("--parent-pid", type=int, default=None,
                       help="exit (gracefully) when this process is no longer the parent")
        p.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
        if self.ready_file != "absent":
            p.add_argument("--ready-file", required=self.ready_file == "required", type=pathlib.Path,
                           default=None, help="JSON file written once serving")
        if self.serves:
            p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
        if self.add_arguments is not None:
            self.add_arguments(p)
        defaults = config.Settings()
        for flag in self._flags():
            default = getattr(defaults, flag.setting)
            p.add_argument(flag.flag, dest=_dest(flag), type=flag.convert, default=None,
                           help=f"{flag.help} (setting {flag.setting}, env "
                                f"{config.env_name(flag.setting)}; default {default})".lstrip())
        return p

    def prepare(self, argv: Sequence[str] | None = None) -> DaemonContext:
        """Flags, settings, logging, token, parent watch (steps 1 to 5 of the module doc).

        Bad flags or settings exit with code 2 and a usage message; a missing token file
        is logged and exits with code 1.
        """
        p = self.parser()
        args = p.parse_args(argv)
        if self.serves and not 0 <= args.port <= 65535:
            p.error(f"argument --port: must be in 0..65535, got {args.port}")
        if self.check is not None:
            problem = self.check(args)
            if problem is not None:
                p.error(problem)
        try:
            settings = config.load()
        except ValueError as err:
            p.error(f"the environment: {err}")
        try:  # each flag passed its own check; what is left is a rule across settings
            settings = settings.override(**{f.setting: getattr(args, _dest(f)) for f in self._flags()})
        except ValueError as err:
            p.error(f"the settings: {err}")
        name = self.log_name(args) if self.log_name is not None else self.component
        configure_logging(args.log_level, name)
        try:
            token = _session.read_token(args.token_file)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
            logger.error("%s", err)
            raise SystemExit(1) from None
        if args.parent_pid is not None:
            exit_with_parent(args.parent_pid, settings.parent_check_s)
        return DaemonContext(
            component=name, args=args, settings=settings, token=token,
            session_dir=args.session_dir, port=args.port if self.serves else 0,
            ready_file=getattr(args, "ready_file", None))

    def _flags(self) -> list[SettingFlag]:
        """The settings flags: ``--host`` for a daemon that serves, then the daemon's own."""
        host = [SettingFlag("--host", "host", "address to bind")] if self.serves else []
        return [*host, *self.settings_flags]

    def run(self, main: Callable[[DaemonContext], Awaitable[int | None]],
            argv: Sequence[str] | None = None) -> int:
        """Prepare, then run ``main`` in an event loop until it returns; the exit code."""
        try:
            ctx = self.prepare(argv)
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 1
        return asyncio.run(_serve(ctx, main))


def write_ready_file(path: str | os.PathLike[str], info: dict[str, Any]) -> None:
    """Publish ``info`` as JSON at ``path`` atomically (the launcher polls for the file)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """SIGTERM this process (a graceful stop) once ``parent_pid`` is no longer its parent.

    A daemon thread checks every ``interval`` seconds, so it works with or without an
    event loop; the signal goes through the daemon's stop path like any other SIGTERM.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _dest(flag: SettingFlag) -> str:
    return flag.flag.lstrip("-").replace("-", "_")


def configure_logging(level: str, name: str) -> None:
    """Log to stderr with ``name`` and the pid on every line; warnings and errors of one kind
    are rate limited (``runtime._logs``)."""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {name}[%(process)d] %(name)s: %(message)s")
    _logs.install()


@dataclass
class DaemonContext:
    """What ``main`` gets: parsed flags, settings, token, and the daemon's stop and servers."""

    #: The name in log lines (``gcs``, ``gs-0``, ``node``, ``worker``).
    component: str
    #: Every parsed flag, the daemon's own included.
    args: argparse.Namespace
    #: The environment's settings with the settings flags on top, validated.
    settings: config.Settings
    #: The cluster token read from ``--token-file``.
    token: str
    session_dir: pathlib.Path
    #: The port asked for (``--port``; 0 picks one); ``serve`` returns the bound port.
    port: int = 0
    ready_file: pathlib.Path | None = None
    #: Set once a stop is requested (signal, parent gone, watched process gone).
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _on_stop: list[Callable[[], object]] = field(default_factory=list)
    _servers: list[grpc.aio.Server] = field(default_factory=list)

    @property
    def host(self) -> str:
        """The address to bind (``--host``, else the ``host`` setting)."""
        return self.settings.host

    def address(self, port: int) -> str:
        """``host:port`` others reach a server bound at ``port`` at (for a wildcard host,
        this machine's address toward the GCS: ``security.advertised_host``)."""
        return f"{advertised_host(self.host, getattr(self.args, 'gcs_address', '') or '')}:{port}"

    async def serve(self, adders: Adders, port: int | None = None) -> tuple[grpc.aio.Server, int]:
        """Start a token-checking server on ``host:port`` (default ``--port``); return it, bound.

        Its message size limit is ``settings.max_message_bytes``.

        Raises ``DaemonStartError`` (exit code 1, logged) if the address cannot be bound.
        """
        port = self.port if port is None else port
        try:
            server, bound = await create_server(self.host, port, self.token, adders,
                                                max_message_bytes=self.settings.max_message_bytes)
        except (OSError, RuntimeError) as err:
            raise DaemonStartError(
                f"could not start {self.component} on {self.host}:{port}: {err}. Pick another "
                "--port or stop the process holding it.") from err
        self._servers.append(server)
        return server, bound

    async def stop_servers(self) -> None:
        """Stop the servers ``serve`` started; in-flight calls get ``settings.stop_grace_s``."""
        servers, self._servers = self._servers, []
        for server in servers:
            await server.stop(self.settings.stop_grace_s)

    def ready(self, port: int, **info: Any) -> None:
        """Write the ready file: ``{"port", "pid", "address"}`` and ``info`` (no-op without one)."""
        if self.ready_file is not None:
            write_ready_file(self.ready_file, {"port": port, "pid": os.getpid(),
                                               "address": self.address(port), **info})

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when a stop is requested (at once if one was already)."""
        if self.stopping.is_set():
            callback()
        else:
            self._on_stop.append(callback)

    def request_stop(self) -> None:
        """Ask the daemon to stop: set ``stopping`` and run the ``on_stop`` callbacks, once."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        callbacks, self._on_stop = self._on_stop, []
        for callback in callbacks:
            callback()

    def on_signal(self, sig: signal.Signals, callback: Callable[[], object]) -> None:
        """Call ``callback`` on the event loop whenever ``sig`` arrives (e.g. SIGUSR1 for a dump)."""
        asyncio.get_running_loop().add_signal_handler(sig, callback)

    def watch_process(self, pid: int, what: str) -> asyncio.Task[None]:
        """Request a stop once process ``pid`` is gone (a zombie or a reused pid counts as gone)."""
        return asyncio.get_running_loop().create_task(self._watch(pid, what), name=f"watch-{pid}")

    async def _watch(self, pid: int, what: str) -> None:
        try:
            proc = psutil.Process(pid)
            while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                await asyncio.sleep(self.settings.parent_check_s)
        except psutil.NoSuchProcess:
            pass
        logger.info("%s (pid %d) is gone; stopping", what, pid)
        self.request_stop()


async def _serve(ctx: DaemonContext, main: Callable[[DaemonContext], Awaitable[int | None]]) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctx.request_stop)
    try:
        code = await main(ctx)
    except DaemonStartError as err:
        logger.error("%s", err)
        code = 1
    finally:
        await ctx.stop_servers()
    return 0 if code is None else code
