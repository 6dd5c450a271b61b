"""File helpers of the object store and its producers: copy in place, unlink what may be
gone, how much room a file system has, sizes for people."""

from __future__ import annotations

import os
import shutil

__all__ = ["copy_into_place", "fmt_bytes", "free_bytes", "unlink_quietly"]


def copy_into_place(src: str, dst: str) -> None:
    """Copy a file, publishing it under ``dst`` only when complete.

    The copy goes to a temporary name and is renamed into place: a reader never sees a
    partial file, and an existing file at ``dst`` that someone has mapped is replaced,
    never truncated under them (which would make their reads fault).
    """
    tmp = f"{dst}.{os.getpid()}.tmp"
    try:
        shutil.copyfile(src, tmp)  # sendfile(2) on Linux: no trip through user space
        os.replace(tmp, dst)
    except BaseException:
        unlink_quietly(tmp)
        raise


def unlink_quietly(path: str) -> None:
    """Remove ``path``; nothing when it is gone already."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def free_bytes(path: str) -> int:
    """Bytes free to us on the file system of ``path`` (a directory, or a file's path whose
    directory exists); -1 when unknown."""
    try:
        st = os.statvfs(path if os.path.isdir(path) else (os.path.dirname(path) or "."))
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def fmt_bytes(n: int) -> str:
    """``n`` bytes for people, e.g. ``'1.5 GiB (1610612736 bytes)'``."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({n} bytes)"
            return text
        value /= 1024
    return f"{n} bytes"
