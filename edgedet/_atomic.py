"""Atomic file writes: write to a temporary file beside the target, then rename it into place.

An interrupted run (crash, Ctrl-C, full disk) therefore never leaves a half-written file under the
final name that a later run would take for a complete one (docs/ARCHITECTURE.md, "Writes are atomic").
Downloads, exports, manifests and the profile cache all write through here. Stdlib only.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_writer", "atomic_write_bytes", "atomic_write_text", "temp_path_for"]

_WRITE_MODES = {"w", "wb", "wt", "x", "xb", "xt"}


def temp_path_for(path: str | os.PathLike[str], tag: str = "tmp") -> Path:
    """A fresh, unused-looking temporary name beside ``path``: ``<name>.<tag>-<random>``.

    Same directory, so the final ``os.replace`` is a rename on one file system (atomic).
    """
    path = Path(path)
    return path.with_name(f"{path.name}.{tag}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    encoding: str | None = None,
    tag: str = "tmp",
    fsync: bool = True,
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit, rename it to ``path``.

    ``mode`` is ``"wb"`` (default), ``"w"``/``"wt"`` (text; ``encoding`` defaults to UTF-8), or
    an ``"x"`` variant, which fails with ``FileExistsError`` if ``path`` already exists. The
    parent directory is created if needed. If the ``with`` body raises (anything, including
    ``KeyboardInterrupt``) the temporary file is deleted and ``path`` is left as it was.

    Example::

        with atomic_writer("profile.json", "w") as f:
            json.dump(data, f)
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"atomic_writer mode must be one of {sorted(_WRITE_MODES)}, got {mode!r}")
    path = Path(path)
    exclusive = mode.startswith("x")
    if exclusive and path.exists():
        raise FileExistsError(f"{path} already exists")
    binary = "b" in mode
    if not binary and encoding is None:
        encoding = "utf-8"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path, tag)
    # O_EXCL: never clobber another writer's temp file; 0o666 lets the umask set permissions as
    # for any ordinary new file (mkstemp would make it 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=encoding) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if exclusive:
            _link_exclusive(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path`` as a ``Path``."""
    with atomic_writer(path, "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = True
) -> Path:
    """Write ``text`` to ``path`` atomically; return ``path`` as a ``Path``."""
    with atomic_writer(path, "w", encoding=encoding, fsync=fsync) as f:
        f.write(text)
    return Path(path)


def _link_exclusive(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist, without a check-then-act race."""
    try:
        os.link(tmp, path)  # fails with FileExistsError if another writer got there first
    except FileExistsError:
        raise FileExistsError(f"{path} already exists") from None
    except OSError:  # no hard links here (e.g. FAT on an SD card): best effort
        if path.exists():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); best effort, a no-op where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
