"""cellray's IPython magics: start or attach to a cluster, run cells on it.

``%load_ext kernel_ext`` registers them. Each magic only parses its arguments
(``arguments.py``), calls the runtime (``cluster.py``, ``cell.py``) and shows the result
(``display.py``). The magics' own help follows.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display, update_display
from traitlets import Bool, Float, Integer

import runtime as rt
from kernel_ext import arguments, cell, cluster
from kernel_ext.routing import OutputRouter
from runtime.exceptions import ActorDiedError, TaskError
from runtime.state import format_bytes

logger = logging.getLogger(__name__)


@magics_class
class CellrayMagics(Magics):
    """``%cluster``, ``%%remote`` / ``%remote``, ``%push`` and ``%pull``, for one shell.

    Settings (``%config CellrayMagics.soft_cancel_grace = 10``) are the traits below.
    """

    soft_cancel_grace = Float(cell.SOFT_CANCEL_GRACE_S, help=(
        "Seconds an interrupted remote cell gets to stop after its KeyboardInterrupt before "
        "its worker is killed (a second interrupt kills it at once).")).tag(config=True)
    large_value_warning = Integer(cell.LARGE_SHIPMENT_BYTES, help=(
        "A name a %%remote cell reads that is bigger than this many bytes, pickled, gets a "
        "warning suggesting rt.put.")).tag(config=True)
    progress_strip = Bool(True, help=(
        "Show a live progress strip under each cell whose tasks are still running a second after "
        "they were submitted (kernel_ext.strip). CELLRAY_PROGRESS_STRIP=0 turns it off as well.")
    ).tag(config=True)

    def __init__(self, shell: Any) -> None:
        super().__init__(shell=shell)
        self.router = OutputRouter(shell)
        #: Worker id of the connection this extension made (it stops it on unload).
        self._owned: str | None = None
        #: Session actors by name, for the connection they were made on.
        self._sessions: dict[str, rt.ActorHandle] = {}
        self._sessions_for: str | None = None
        #: --no-block cells still running (cancelled on unload).
        self._pending: list[cell.RemoteCell] = []
        #: The dashboard `%cluster dashboard` shows (closed when replaced or on unload).
        self.dashboard: Any = None

    @property
    def ip(self) -> Any:
        """The shell these magics are registered on."""
        assert self.shell is not None, "CellrayMagics used without a shell"
        return self.shell

    # ---- %cluster ----

    @arguments.cluster
    @line_magic
    def cluster(self, line: str = "") -> None:
        """Start, attach to, show or stop the cluster this kernel uses.

        ``%cluster start [--nodes N] [--cpus C] [--gpus G] [--resources JSON] [--gcs-storage URL]``
        starts a local cluster (or reuses the one this kernel is connected to); its GCS keeps
        its tables in ``--gcs-storage`` (default ``sqlite``, a file in the session directory),
        and is restarted from them if it dies.
        ``%cluster attach ADDRESS [--token-file F | --bundle FILE]`` connects to a running
        cluster (``--bundle``: the join bundle of a cluster started with ``--tls``).
        ``%cluster status`` (or just ``%cluster``) shows its nodes, resources and load.
        ``%cluster dashboard`` shows the live dashboard (nodes, futures, actors, spillover).
        ``%cluster stop`` disconnects, and stops the cluster if this kernel started it.
        """
        args = arguments.parse(self.cluster, line)
        action = args.action or "status"
        _check_cluster_args(action, args)
        if action == "start":
            done = cluster.start(nodes=args.nodes, cpus=args.cpus, gpus=args.gpus,
                                 resources=args.resources, gcs_storage=args.gcs_storage)
            self._connected(done.reused)
            if done.reused:
                print(f"A cluster is already connected: {cluster.describe(done.info)}; reusing it. "
                      "Run `%cluster stop` first to start a new one.")
            else:
                print(f"Started a local cluster at {cluster.describe(done.info)}. Run a cell on it "
                      "with %%remote; `%cluster status` shows it, `%cluster stop` stops it.")
        elif action == "attach":
            try:
                done = cluster.attach(args.address, args.token_file, args.bundle)
            except UsageError as e:  # the runtime words its hints for rt.init(): name our flags
                raise UsageError(arguments.in_attach_terms(str(e), args.address)) from None
            self._connected(done.reused)
            if done.reused:
                print(f"Already connected to {cluster.describe(done.info)}; `%cluster stop` "
                      "first to attach elsewhere.")
            else:
                print(f"Attached to the cluster at {cluster.describe(done.info)}. "
                      "`%cluster stop` disconnects; the cluster keeps running.")
        elif action == "stop":
            self._disconnect(print_outcome=True)
        elif cluster.current() is None:
            print("No cluster is running. " + cluster.START_HINT)
        elif action == "dashboard":
            from widgets import Dashboard
            if self.dashboard is not None:  # one live dashboard per kernel: re-running replaces it
                self.dashboard.close()
            self.dashboard = Dashboard()
            display(self.dashboard)
        else:
            view = cluster.view()
            display({"text/plain": repr(view), "text/html": view._repr_html_()}, raw=True)

    def _connected(self, reused: bool) -> None:
        if not reused:
            self._owned = _connection()
        if self._owned is not None and self._owned == _connection():
            self.router.install()

    def _cancel_pending(self) -> None:
        for fut in self._pending:
            try:
                fut.cancel()
            except Exception as e:  # noqa: BLE001 - the connection went away first: nothing to cancel
                logger.debug("cancelling %r: %s", fut, e)
        self._pending.clear()

    def _disconnect(self, print_outcome: bool = False) -> None:
        self._cancel_pending()
        self._sessions.clear()
        self.router.uninstall()
        self._owned = None
        info = cluster.stop()
        if not print_outcome:
            return
        if info is None:
            print("No cluster is running; nothing to stop.")
        elif info.started_here:
            print(f"Stopped the cluster at {info.address}.")
        else:
            print(f"Disconnected from the cluster at {info.address}; it keeps running.")

    # ---- %%remote / %remote ----

    @arguments.remote
    @line_cell_magic
    def remote(self, line: str = "", cell_source: str | None = None) -> Any:
        """Run a cell (``%%remote``) or one expression (``%remote EXPR``) on a cluster worker.

        The names the cell reads from the notebook are sent with it (modules are imported
        again on the worker; other values are pickled). What it prints appears in the cell
        as it happens; its last expression's value is the cell's value; ``--pull a,b``
        copies names it assigns back into the notebook. An exception shows the cell's own
        lines. Interrupting the kernel cancels the remote work (a second interrupt kills
        its worker). ``--no-block`` returns a future at once; ``--session NAME`` runs in a
        persistent namespace (see ``%push`` / ``%pull``).

        Examples::

            %%remote --cpus 2 --pull model
            model = fit(data)
            model.score(test)

            %remote --gpus 1 torch.cuda.device_count()
        """
        if cell_source is None:
            options, source = arguments.split_line_options(line)
            if not source:
                raise UsageError("%remote needs an expression, e.g. `%remote sum(range(10))`. "
                                 "To run a whole cell, start it with %%remote.")
        else:
            options, source = line, cell_source
        args = arguments.parse(self.remote, options)
        if args.out is not None and args.out in args.pull:
            raise UsageError(f"--out {args.out} would overwrite the pulled name {args.out!r}; "
                             "choose another name.")
        return self._run(args, source)

    def _run(self, args: Any, source: str) -> Any:
        self._require_cluster("%%remote")
        n = self.ip.displayhook.prompt_count  # this cell's In[n], whatever the IPython version
        filename = f"<cell-{n}>"
        task_name = args.name or f"cell-{n}"
        label = f"%%remote cell [{n}]" if not args.name else f"%%remote {args.name!r}"
        prepared = cell.prepare(source, filename, self.ip.user_ns, self.ip.user_ns_hidden)
        for name, size in prepared.shipment.large(self.large_value_warning).items():
            print(f"cellray warning: {name!r} is {format_bytes(size)} pickled and is sent with "
                  f"every run of this cell. Put it in the object store once with "
                  f"`{name}_ref = rt.put({name})`, and use `rt.get({name}_ref)` in the cell.",
                  file=sys.stderr)
        options = cell.run_options(args.cpus, args.gpus, args.resources, task_name)
        session = self._session(args.session, options) if args.session else None
        own_names = cell.SESSION_TASK_NAMES if session is not None else (task_name,)
        for name in own_names:
            self.router.mark_cell_task(name)
        ref = cell.submit(prepared, options, args.pull, session)
        fut = cell.RemoteCell(ref, label, origin=self.router.current_origin(),
                              assign=self.ip.user_ns.update, refresh=self._refresh,
                              soft_cancel_grace=self.soft_cancel_grace, task_names=own_names)
        if args.no_block:
            self._pending = [f for f in self._pending if not f.done()] + [fut]
            fut.watch()
            if args.out is None:
                return fut
            self.ip.user_ns[args.out] = fut
            display(fut)
            return None
        try:
            value = fut.wait_here()
        except ActorDiedError:
            self._sessions.pop(args.session, None)  # the next cell starts a fresh session
            raise
        if args.out is not None:
            self.ip.user_ns[args.out] = value
        return value

    def _refresh(self, fut: cell.RemoteCell) -> None:
        """A --no-block cell ended: update its displays under the cell that started it."""
        with self.router.displaying_in(fut.origin) as routed:
            if routed:
                update_display(fut._repr_mimebundle_(), raw=True, display_id=fut.display_id)

    # ---- sessions: %push / %pull ----

    def _session(self, name: str | None, options: dict[str, Any] | None = None,
                 create: bool = True) -> rt.ActorHandle:
        connection = _connection()
        if self._sessions_for != connection:
            self._sessions, self._sessions_for = {}, connection
        if name is None:
            if len(self._sessions) == 1:
                return next(iter(self._sessions.values()))
            known = ", ".join(sorted(self._sessions)) or "none yet"
            raise UsageError(f"Name the session with --session NAME (sessions in use: {known}).")
        handle = self._sessions.get(name)
        if handle is None:
            if create:
                handle = cell.session_handle(name, options or {})
            else:
                try:
                    handle = rt.get_actor(name, cell.session_namespace())
                except ValueError:
                    raise UsageError(
                        f"There is no session {name!r}: start it with `%%remote --session "
                        f"{name}` or `%push --session {name} x`.") from None
            self._sessions[name] = handle
        return handle

    @arguments.push
    @line_magic
    def push(self, line: str = "") -> None:
        """Send notebook names to a ``--session`` namespace: ``%push [--session NAME] a b``."""
        args = arguments.parse(self.push, line)
        self._require_cluster("%push")
        missing = [n for n in args.names if n not in self.ip.user_ns]
        if missing:
            raise UsageError(f"%push: {', '.join(missing)} not defined in this notebook.")
        handle = self._session(args.session)
        shipment = cell.ship(args.names, self.ip.user_ns, None, what="%push")
        rt.get(handle.push.remote(shipment.values, shipment.imports))

    @arguments.pull
    @line_magic
    def pull(self, line: str = "") -> None:
        """Copy names from a ``--session`` namespace into the notebook: ``%pull [--session S] a b``."""
        args = arguments.parse(self.pull, line)
        self._require_cluster("%pull")
        handle = self._session(args.session, create=False)
        try:
            values = rt.get(handle.pull.remote(tuple(args.names)))
        except TaskError as e:
            why = e.cause or e.remote_traceback.strip().splitlines()[-1]
            raise UsageError(f"%pull: {why}") from None
        self.ip.user_ns.update(values)

    # ---- helpers ----

    def _require_cluster(self, what: str) -> None:
        if not rt.is_initialized():
            raise UsageError(f"{what} needs a cluster, and none is running. {cluster.START_HINT}")

    def close(self) -> None:
        """Undo what the magics started: cancel running cells, stop sessions and our cluster."""
        if self.dashboard is not None:
            self.dashboard.close()
            self.dashboard = None
        try:
            if self._owned is not None and self._owned == _connection():
                self._disconnect()
            else:
                self._cancel_pending()
                if self._sessions and self._sessions_for == _connection():
                    for handle in self._sessions.values():
                        try:
                            rt.kill(handle)
                        except Exception as e:  # noqa: BLE001 - best effort while unloading
                            logger.debug("killing session %r: %s", handle, e)
                self.router.uninstall()
        finally:
            self._pending.clear()
            self._sessions.clear()
            self._owned = None


def _connection() -> str | None:
    if not rt.is_initialized():
        return None
    return rt.get_runtime_context().get_worker_id()


def _check_cluster_args(action: str, args: Any) -> None:
    """Options that make no sense for ``action`` are a usage error, not silently ignored."""
    given = {"--nodes": args.nodes, "--cpus": args.cpus, "--gpus": args.gpus,
             "--resources": args.resources, "--gcs-storage": args.gcs_storage,
             "--token-file": args.token_file, "--bundle": args.bundle}
    allowed = {"start": {"--nodes", "--cpus", "--gpus", "--resources", "--gcs-storage"},
               "attach": {"--token-file", "--bundle"}}.get(action, set())
    extra = [k for k, v in given.items() if v is not None and k not in allowed]
    if extra:
        raise UsageError(f"%cluster {action} does not take {', '.join(extra)}. "
                         "Usage: %cluster start [--nodes N] [--cpus C] [--gpus G] [--resources JSON] "
                         "[--gcs-storage URL] | attach ADDRESS [--token-file F | --bundle FILE] | "
                         "status | stop")
    if action == "attach" and not args.address:
        raise UsageError("%cluster attach needs the cluster's address, e.g. `%cluster attach "
                         "127.0.0.1:6380 --token-file /tmp/cellray/session_latest/token`.")
    if action != "attach" and args.address:
        raise UsageError(f"%cluster {action} takes no address (did you mean "
                         f"`%cluster attach {args.address}`?)")


# The module docstring doubles as the help of the whole extension (ipyparallel's way).
__doc__ = "\n\n".join([__doc__ or ""] + [
    f"%{name}\n{'-' * (len(name) + 1)}\n{getattr(CellrayMagics, name).__doc__}"
    for name in ("cluster", "remote", "push", "pull")])
