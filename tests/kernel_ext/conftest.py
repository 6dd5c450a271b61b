"""Fixtures for the extension's tests: an in-process IPython shell, and a real kernel.

``shell`` is IPython's test shell (``globalipapp``) with ``kernel_ext`` loaded; magics run
through ``run_cell`` inside ``capture_output``. ``shell_cluster`` starts a cluster with
``%cluster start`` in it for the module and stops it after.

``kernel`` is a real ipykernel started with ``jupyter_client`` from a kernelspec written to
a temporary directory for *this* Python (a ``python3`` kernelspec elsewhere on the machine
is never used). It loads the extension and starts a cluster once per module; its
``execute`` records every iopub message, so a test can see output that a cell receives
after it finished. Teardown stops the cluster inside the kernel, shuts the kernel down
and waits for every process it started to exit.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import queue
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import IPython
import psutil
import pytest
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

import runtime as rt

KERNEL_NAME = "cellray-test-python"


# ---- in-process shell ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shell() -> Iterator[Any]:
    """IPython's test shell with the extension loaded (unloaded after the module)."""
    ip = start_ipython() or IPython.get_ipython()  # start_ipython answers None after its first call
    with capture_output():
        ip.run_line_magic("load_ext", "kernel_ext")
    try:
        yield ip
    finally:
        with capture_output():
            ip.run_line_magic("unload_ext", "kernel_ext")
        assert not rt.is_initialized(), "unloading the extension left a cluster connected"
        _forget_connections(ip)


def _forget_connections(ip: Any) -> None:
    """Drop what the module's cells left in the shared shell (ObjectRefs, futures, ...).

    They hold the module's shut-down runtime connection; the shell outlives the module.
    """
    ip.reset(new_session=False)
    gc.collect()


@pytest.fixture(scope="module")
def shell_cluster(shell: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``%cluster start --cpus 2`` in the test shell for the module; ``%cluster stop`` after."""
    assert not rt.is_initialized(), "a previous test left rt initialized"
    with capture_output() as cap:
        result = shell.run_cell("%cluster start --cpus 2")
    assert result.success, cap.stderr
    try:
        yield shell
    finally:
        with capture_output():
            shell.run_cell("%cluster stop")
        assert not rt.is_initialized()


# ---- a real kernel ------------------------------------------------------------------------


@dataclass
class Execution:
    """One ``execute_request`` and the iopub messages whose parent it is."""

    msg_id: str
    messages: list[dict[str, Any]]
    reply: dict[str, Any]

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in types]

    def stream(self, name: str = "stdout") -> str:
        return "".join(m["content"]["text"] for m in self.of_type("stream")
                       if m["content"]["name"] == name)

    @property
    def result(self) -> str | None:
        found = self.of_type("execute_result")
        return found[-1]["content"]["data"]["text/plain"] if found else None

    @property
    def error(self) -> dict[str, Any] | None:
        found = self.of_type("error")
        return found[-1]["content"] if found else None

    @property
    def ok(self) -> bool:
        return bool(self.reply["content"]["status"] == "ok")


@dataclass
class Kernel:
    km: KernelManager
    kc: Any
    #: Every iopub message seen so far, in arrival order.
    iopub: list[dict[str, Any]] = field(default_factory=list)

    def execute(self, code: str, *, on_message: Callable[[dict[str, Any]], None] | None = None,
                timeout: float = 60.0) -> Execution:
        """Run ``code``; return when the kernel is idle again after it.

        ``on_message`` sees every iopub message meanwhile (those of earlier cells too).
        """
        msg_id = self.kc.execute(code)
        deadline = time.monotonic() + timeout
        mine: list[dict[str, Any]] = []
        while True:
            msg = self._next(self.kc.get_iopub_msg, deadline, f"iopub output of {code!r}")
            self.iopub.append(msg)
            if msg["parent_header"].get("msg_id") == msg_id:
                mine.append(msg)
            if on_message is not None:
                on_message(msg)
            if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle"):
                break
        while True:
            reply = self._next(self.kc.get_shell_msg, deadline, f"the reply to {code!r}")
            if reply["parent_header"].get("msg_id") == msg_id:
                return Execution(msg_id, mine, reply)

    @staticmethod
    def _next(get: Callable[..., dict[str, Any]], deadline: float, what: str) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}")
        try:
            return get(timeout=left)
        except queue.Empty:
            raise AssertionError(f"timed out waiting for {what}") from None

    def check(self, code: str, **kwargs: Any) -> Execution:
        """``execute`` that fails the test when the cell raises."""
        ex = self.execute(code, **kwargs)
        assert ex.ok, f"cell failed: {code!r}\n" + "\n".join((ex.error or {}).get("traceback", []))
        return ex


def _kernelspec(root: pathlib.Path) -> KernelSpecManager:
    spec = root / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cellray tests", "language": "python"}))
    return KernelSpecManager(kernel_dirs=[str(root)])


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """A real kernel with ``kernel_ext`` loaded and ``%cluster start --cpus 2`` run."""
    root = tmp_path_factory.mktemp("kernel")
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=_kernelspec(root / "kernels"))
    env = dict(os.environ, CELLRAY_TMPDIR=str(root / "cellray"))
    env.pop("PYTHONPATH", None)
    km.start_kernel(cwd=str(root), env=env)
    kernel_proc = psutil.Process(km.provisioner.process.pid)  # type: ignore[union-attr]
    kc = km.client()
    kc.start_channels()
    k = Kernel(km, kc)
    try:
        kc.wait_for_ready(timeout=60)
        k.check("%load_ext kernel_ext")
        k.check("%cluster start --cpus 2")
        yield k
    finally:
        started = kernel_proc.children(recursive=True) if kernel_proc.is_running() else []
        try:
            if km.is_alive():
                k.execute("%cluster stop", timeout=30)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
            _, alive = psutil.wait_procs(started, timeout=15)
            assert not alive, f"processes of the kernel outlived it: {alive}"
