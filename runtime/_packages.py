"""Packages of runtime environments: local code made into a zip named by its content.

A ``working_dir`` or a ``py_modules`` entry (a package directory or one ``.py`` file) is
*scanned* (files, sizes, modes; ``excludes`` and ``ALWAYS_EXCLUDED`` left out), *hashed*
(the id: sha256 of every path, mode and content, in path order, so the same tree always
gets the same id on every machine) and *zipped* deterministically (sorted entries, fixed
timestamps, modes 0644/0755 only). The driver uploads a package once; nodes download it
and unpack it once, under their session directory, keyed by id.

Layout in the GCS ``kv`` table (``package_key`` builds the keys)::

    package:<id>                     JSON manifest {"zip": <sha256 of the zip>, "size": n, "chunks": k}
    package:<id>:<zip sha>:<i>       chunk i of the zip (CHUNK bytes, the last one shorter)

The manifest is written after its chunks, so a manifest that is there names a complete
zip; chunks are keyed by the zip's own hash too, so two drivers whose zlib builds make
different bytes of the same tree never mix their chunks.

``excludes`` are gitignore patterns relative to the packaged directory: ``*.log`` (any
level), ``/data/`` (the top-level directory ``data`` only), ``build/**/tmp``, ``!keep.log``
(a later negation includes again). An excluded directory excludes all it holds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runtime.exceptions import RuntimeEnvSetupError

#: The most bytes (before compression) one package may hold: every package is stored in
#: the GCS, so it stays well under Ray's 500 MiB, which suits object storage but not the
#: rows of a GCS table.
PACKAGE_LIMIT = 100 * 2**20
#: Bytes per GCS row of a package's zip (well under every gRPC message limit).
CHUNK = 512 * 1024
#: Left out of every package, whatever ``excludes`` says.
ALWAYS_EXCLUDED = (".git", "__pycache__")
#: The ``kv`` key prefix of packages.
KEY_PREFIX = b"package:"
_KV = "kv"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def package_key(package_id: str, zip_sha: str = "", chunk: int = -1) -> bytes:
    """The ``kv`` key of a package's manifest, or (``zip_sha``, ``chunk``) of one chunk."""
    if chunk < 0:
        return KEY_PREFIX + package_id.encode()
    return KEY_PREFIX + f"{package_id}:{zip_sha[:16]}:{chunk}".encode()


# ---- excludes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    anchored: bool


def _glob_regex(glob: str) -> str:
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and "]" in glob[i + 2:]:
            end = glob.index("]", i + 2)
            body = glob[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


def excluder(patterns: Iterable[str]) -> Callable[[str, bool], bool]:
    """``excluded(relative_path, is_dir)`` for gitignore ``patterns`` plus ``ALWAYS_EXCLUDED``
    (paths relative to the packaged directory, ``/``-separated; the last match decides)."""
    rules: list[_Rule] = []
    for raw in [*ALWAYS_EXCLUDED, *patterns]:
        p = raw.strip()
        if not p or p.startswith("#"):
            continue
        negate = p.startswith("!")
        p = p[1:] if negate else p
        dir_only = p.endswith("/")
        p = p.rstrip("/")
        anchored = "/" in p
        p = p.lstrip("/")
        if p:
            rules.append(_Rule(re.compile(_glob_regex(p) + r"\Z"), negate, dir_only, anchored))

    def excluded(rel: str, is_dir: bool) -> bool:
        verdict = False
        name = rel.rsplit("/", 1)[-1]
        for r in rules:
            if r.dir_only and not is_dir:
                continue
            if r.regex.match(rel if r.anchored else name):
                verdict = not r.negate
        return verdict

    return excluded


# ---- scanning and hashing -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One file or directory of a package."""

    #: Its path in the zip, ``/``-separated (directories end without a slash).
    name: str
    #: Where it is on this machine.
    path: str
    is_dir: bool
    size: int
    mtime_ns: int
    executable: bool


@dataclass(frozen=True)
class Package:
    """A scanned local directory or file, named by the hash of its content."""

    #: The absolute local path packaged.
    source: str
    #: The id: sha256 (hex, 32 characters) of the entries' names, modes and contents.
    package_id: str
    #: Bytes of its files, before compression.
    size: int
    entries: tuple[Entry, ...]

    def build_zip(self) -> bytes:
        """The deterministic zip of the entries. Raises ``RuntimeError`` when a file changed
        since the scan (its id would be wrong)."""
        buf = io.BytesIO()
        digest = hashlib.sha256()
        with zipfile.ZipFile(buf, "w") as zf:
            for e in self.entries:
                data = b"" if e.is_dir else _read(e.path)
                _hash_entry(digest, e, data)
                info = zipfile.ZipInfo(e.name + "/" if e.is_dir else e.name, date_time=_ZIP_TIME)
                mode = 0o40755 if e.is_dir else (0o100755 if e.executable else 0o100644)
                info.external_attr = mode << 16
                info.compress_type = zipfile.ZIP_STORED if e.is_dir else zipfile.ZIP_DEFLATED
                zf.writestr(info, data, compresslevel=6)
        if digest.hexdigest()[:32] != self.package_id:
            raise RuntimeError(f"files under {self.source} changed while it was being packaged; "
                               "call again once they are written")
        return buf.getvalue()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _hash_entry(digest: hashlib._Hash, e: Entry, data: bytes) -> None:
    kind = b"d" if e.is_dir else (b"x" if e.executable else b"f")
    digest.update(e.name.encode() + b"\0" + kind + b"\0" + str(len(data)).encode() + b"\0")
    digest.update(data)


def _scan(root: Path, top: str, excludes: Iterable[str]) -> list[Entry]:
    """Entries under directory ``root``, named ``top/...`` (``top`` "": at the zip's root)."""
    excluded = excluder(excludes)
    out: list[Entry] = []
    seen: set[str] = set()

    def walk(directory: Path, rel: str) -> None:
        real = os.path.realpath(directory)
        if real in seen:  # a symlink back up the tree
            return
        seen.add(real)
        with os.scandir(directory) as it:
            items = sorted(it, key=lambda d: d.name)
        for d in items:
            r = f"{rel}/{d.name}" if rel else d.name
            is_dir = d.is_dir()
            if excluded(r, is_dir):
                continue
            name = f"{top}/{r}" if top else r
            try:
                st = d.stat()
            except OSError as err:  # a broken symlink, a file removed meanwhile
                raise ValueError(f"cannot package {d.path}: {err.strerror}. Remove it or leave it "
                                 f"out with runtime_env={{'excludes': [{r!r}]}}.") from err
            out.append(Entry(name, d.path, is_dir, 0 if is_dir else st.st_size, st.st_mtime_ns,
                             bool(st.st_mode & 0o100)))
            if is_dir:
                walk(Path(d.path), r)

    walk(root, "")
    return out


#: Package ids already computed, by (source, top, excludes): the stat fingerprint they had.
_known: dict[tuple[str, str, tuple[str, ...]], tuple[tuple[tuple[str, int, int, bool], ...], str]] = {}
_KNOWN_MAX = 64


def package(path: str | os.PathLike[str], *, what: str, module: bool = False,
            excludes: Iterable[str] = (), limit: int = PACKAGE_LIMIT) -> Package:
    """Scan and hash ``path``: a directory whose content goes at the zip's root (a
    ``working_dir``), or with ``module`` a package directory or ``.py`` file that goes in
    under its own name (a ``py_modules`` entry, importable by that name).

    ``what`` names the option in errors. Raises ``FileNotFoundError`` when ``path`` does
    not exist, ``NotADirectoryError`` when a ``working_dir`` is a file, ``ValueError`` when
    it is not a ``.py`` file or directory (``module``) or holds more than ``limit`` bytes.
    A tree whose sizes and times did not change since the last call is not read again.
    """
    src = Path(path).expanduser().absolute()
    if not src.exists():
        raise FileNotFoundError(f"runtime_env {what}: {str(path)!r} does not exist (resolved to "
                                f"{src}, from the current directory {os.getcwd()}). Pass an "
                                "existing local directory.")
    excludes = tuple(excludes)
    if src.is_dir():
        top = src.name if module else ""
        entries = _scan(src, top, excludes)
    elif module and src.suffix == ".py":
        st = src.stat()
        entries = [Entry(src.name, str(src), False, st.st_size, st.st_mtime_ns, bool(st.st_mode & 0o100))]
    elif module:
        raise ValueError(f"runtime_env {what}: {str(src)!r} is neither a directory nor a .py file; "
                         "pass a package directory or a single module file.")
    else:
        raise NotADirectoryError(f"runtime_env {what}: {str(src)!r} is a file, not a directory; "
                                 "pass the directory that holds your code (a single module goes "
                                 "in py_modules).")
    size = sum(e.size for e in entries)
    if size > limit:
        biggest = sorted((e for e in entries if not e.is_dir), key=lambda e: -e.size)[:3]
        names = ", ".join(f"{e.name} ({e.size / 2**20:.1f} MiB)" for e in biggest)
        raise ValueError(f"runtime_env {what}: {src} holds {size / 2**20:.1f} MiB of files, over "
                         f"the limit of {limit / 2**20:.0f} MiB for one package (it is stored in "
                         f"the GCS). The largest: {names}. Leave data out with "
                         "runtime_env={'excludes': [...]} (gitignore patterns) and read it from "
                         "shared storage or pass it with rt.put().")
    fingerprint = tuple((e.name, e.size, e.mtime_ns, e.executable) for e in entries)
    cache_key = (str(src), "module" if module else "dir", excludes)
    known = _known.get(cache_key)
    if known is not None and known[0] == fingerprint:
        return Package(str(src), known[1], size, tuple(entries))
    digest = hashlib.sha256()
    for e in entries:
        _hash_entry(digest, e, b"" if e.is_dir else _read(e.path))
    package_id = digest.hexdigest()[:32]
    if len(_known) >= _KNOWN_MAX:
        _known.pop(next(iter(_known)))
    _known[cache_key] = (fingerprint, package_id)
    return Package(str(src), package_id, size, tuple(entries))


# ---- the GCS side ---------------------------------------------------------------------


class Kv(Protocol):
    """What packages need of a GCS client (``GcsClient`` has both)."""

    async def get_entry(self, table: str, key: bytes) -> bytes | None: ...

    async def put(self, table: str, key: bytes, value: bytes,
                  only_if_absent: bool = False) -> tuple[bool, bytes]: ...


async def upload(gcs: Kv, pkg: Package) -> bool:
    """Store ``pkg`` in the GCS unless it is there already; True when it was uploaded."""
    if await gcs.get_entry(_KV, package_key(pkg.package_id)) is not None:
        return False
    data = pkg.build_zip()
    zip_sha = hashlib.sha256(data).hexdigest()
    chunks = max(1, -(-len(data) // CHUNK))
    for i in range(chunks):
        await gcs.put(_KV, package_key(pkg.package_id, zip_sha, i), data[i * CHUNK:(i + 1) * CHUNK])
    manifest = json.dumps({"zip": zip_sha, "size": len(data), "chunks": chunks}).encode()
    await gcs.put(_KV, package_key(pkg.package_id), manifest)
    return True


async def download(gcs: Kv, package_id: str) -> bytes:
    """The zip of package ``package_id`` from the GCS. Raises ``RuntimeEnvSetupError`` when
    it is missing or its bytes do not match its manifest."""
    raw = await gcs.get_entry(_KV, package_key(package_id))
    if raw is None:
        raise RuntimeEnvSetupError(
            f"runtime_env package {package_id} is not in the GCS (the GCS restarted without "
            "persistent storage since the driver uploaded it?). Call runtime.init() again from "
            "the driver, which uploads it anew.")
    m = json.loads(raw)
    parts = []
    for i in range(int(m["chunks"])):
        part = await gcs.get_entry(_KV, package_key(package_id, m["zip"], i))
        if part is None:
            raise RuntimeEnvSetupError(f"runtime_env package {package_id}: chunk {i} of "
                                       f"{m['chunks']} is missing from the GCS")
        parts.append(part)
    data = b"".join(parts)
    if len(data) != m["size"] or hashlib.sha256(data).hexdigest() != m["zip"]:
        raise RuntimeEnvSetupError(f"runtime_env package {package_id}: the bytes in the GCS do "
                                   "not match its manifest (a partial upload?)")
    return data


def unpack(data: bytes, root: Path, package_id: str) -> Path:
    """Unpack zip ``data`` to ``root/package_id`` unless it is there; return that path.

    Safe when several processes unpack the same package at once: each extracts into a
    directory of its own and renames it into place; the first rename wins, the others
    discard their copy.
    """
    dest = root / package_id
    if dest.is_dir():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{package_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                name = info.filename
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts:
                    raise RuntimeEnvSetupError(f"runtime_env package {package_id} holds an "
                                               f"unsafe path {name!r}")
                target = tmp.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
                if (info.external_attr >> 16) & 0o100:
                    target.chmod(0o755)
        tmp.mkdir(parents=True, exist_ok=True)  # an empty package is an empty directory
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
