"""Downloading and caching files (checkpoints, model bundles) with hash checks. Stdlib only.

Torch-free, so the on-device runtime can fetch model bundles with it too.

Where files go: :func:`cache_dir`, by default ``~/.cache/edgedet`` (``$XDG_CACHE_HOME/edgedet``
when ``XDG_CACHE_HOME`` is set); set ``EDGEDET_CACHE`` to use another directory.

A download streams into ``<name>.part-<random>`` beside its destination while it is hashed, is
checked against the expected sha256 (full or prefix), and only then is renamed to its final name,
so a file under its final name is always complete. A destination that already exists and whose
hash verifies is returned without any network access.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from edgedet._atomic import atomic_write_bytes, atomic_write_text, atomic_writer

__all__ = [
    "DownloadError",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_writer",
    "cache_dir",
    "download",
    "hash_prefix_from_name",
    "sha256_file",
    "url_filename",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough for smooth progress
_HEX = re.compile(r"^[0-9a-f]+$")
# torch.hub / effdet convention: "<stem>-<first hex digits of sha256>.<ext>"
_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_USER_AGENT = "edgedet (+https://github.com/rwightman/efficientdet-pytorch checkpoints)"


class DownloadError(RuntimeError):
    """A download failed (network, HTTP status, incomplete body or hash mismatch).

    Nothing is left behind under the destination name when this is raised.
    """


def cache_dir() -> Path:
    """The edgedet cache directory (not created here).

    Order: ``$EDGEDET_CACHE`` if set and non-empty; else ``$XDG_CACHE_HOME/edgedet``; else
    ``~/.cache/edgedet``. Checkpoints go to ``cache_dir() / "checkpoints"``.
    """
    override = os.environ.get("EDGEDET_CACHE", "").strip()
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgedet"


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = _CHUNK) -> str:
    """The hex sha256 of the file at ``path``, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def hash_prefix_from_name(name: str | os.PathLike[str]) -> str | None:
    """The sha256 prefix embedded in a file name, as in ``tf_efficientdet_d0_34-f153e0cf.pth``.

    Follows the torch.hub convention (the hex digits after the last ``-``, at least 8); ``None``
    when the name carries none.
    """
    match = _NAME_HASH.search(Path(name).name)
    return match.group(1) if match else None


def url_filename(url: str) -> str:
    """The file name at the end of a URL's path (query and fragment ignored)."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name:
        raise ValueError(f"cannot tell a file name from URL {url!r}; pass dest= explicitly")
    return name


def download(
    url: str,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    dest: str | os.PathLike[str] | None = None,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` (``http``, ``https`` or ``file``) to ``dest`` and return its path.

    Args:
        url: where to fetch the file from.
        sha256: expected full hex sha256 of the file, if known.
        sha256_prefix: expected leading hex digits of the sha256 (effdet file names carry the
            first 8). Both may be given; each must match.
        dest: the file to write. An existing directory means "the URL's file name inside it".
            Default: ``cache_dir() / <the URL's file name>``.
        progress: show a tqdm bar (when tqdm is installed and stderr is a terminal), else log
            at INFO about every 10%.
        timeout: socket timeout in seconds, per blocking operation.

    If ``dest`` exists and verifies against the given hash, it is returned without network
    access (with no hash given, any existing ``dest`` counts as cached). If it exists but does
    not verify, a warning is logged and it is downloaded again.

    Raises:
        DownloadError: on an HTTP error, an unreachable host, a short body or a hash mismatch.
            The partial file is always deleted first. ``KeyboardInterrupt`` also deletes it,
            then propagates unchanged.
        ValueError: for a malformed hash or URL.
    """
    sha256 = _check_hex(sha256, "sha256", exact=64)
    sha256_prefix = _check_hex(sha256_prefix, "sha256_prefix")
    path = _destination(url, dest)

    if path.is_file():
        if sha256 is None and sha256_prefix is None:
            logger.debug("using cached %s (no hash to check)", path)
            return path
        actual = sha256_file(path)
        if _hash_problem(actual, sha256, sha256_prefix) is None:
            logger.debug("using cached %s (sha256 verified)", path)
            return path
        logger.warning("cached file %s does not match its expected sha256 (got %s); downloading "
                       "it again", path, actual)

    logger.info("downloading %s to %s", url, path)
    try:
        with atomic_writer(path, "wb", tag="part") as out:
            actual = _fetch(url, out, path, progress=progress, timeout=timeout)
            problem = _hash_problem(actual, sha256, sha256_prefix)
            if problem:  # raising inside the writer deletes the .part file
                raise DownloadError(
                    f"{problem} for {url}: the file is corrupt, was changed upstream, or the "
                    f"expected hash is wrong. Nothing was saved. Retry the download; if the new "
                    f"file is the one you want, update the expected hash."
                )
    except KeyboardInterrupt:
        logger.warning("download of %s interrupted; the partial file was removed", url)
        raise
    return path


def _fetch(url: str, out: Any, path: Path, *, progress: bool, timeout: float) -> str:
    """Stream ``url`` into ``out`` (the open temp file for ``path``); return the sha256 written."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            total = _content_length(response)
            bar = _Progress(url_filename(url), total, enabled=progress)
            try:
                while chunk := response.read(_CHUNK):
                    _write(out, chunk, path)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
    except urllib.error.HTTPError as exc:
        raise DownloadError(_http_message(url, exc)) from exc
    except urllib.error.URLError as exc:
        if urllib.parse.urlsplit(url).scheme == "file":
            raise DownloadError(f"could not read {url}: {exc.reason}.") from exc
        raise DownloadError(
            f"could not reach {url}: {exc.reason}. Check the network connection, the URL and any "
            f"proxy settings (HTTPS_PROXY); or fetch the file by other means and pass its local "
            f"path instead."
        ) from exc
    except (http.client.HTTPException, OSError) as exc:  # IncompleteRead, reset, timeout
        raise DownloadError(
            f"download of {url} failed after {received} bytes: {exc!r}. The connection dropped "
            f"or timed out; nothing was saved. Retry, or raise timeout= for a slow link."
        ) from exc
    if total is not None and received != total:
        raise DownloadError(
            f"download of {url} is incomplete: got {received} of {total} bytes. The connection "
            f"closed early; nothing was saved. Retry the download."
        )
    return digest.hexdigest()


def _write(out: Any, chunk: bytes, path: Path) -> None:
    # A local write failure is not a network problem: say so, and where.
    try:
        out.write(chunk)
    except OSError as exc:
        raise DownloadError(
            f"could not write {path}: {exc}. Check free disk space and permissions there (or set "
            f"EDGEDET_CACHE to another directory)."
        ) from exc


def _content_length(response: Any) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _http_message(url: str, exc: urllib.error.HTTPError) -> str:
    hint = {
        404: "the file does not exist at that address; check the URL or checkpoint name",
        403: "access was refused; the file may be private or the host is rate limiting",
        429: "the host is rate limiting; wait and retry",
    }.get(exc.code, "retry later, or fetch the file by other means and pass its local path")
    return f"HTTP {exc.code} {exc.reason} for {url}: {hint}."


def _destination(url: str, dest: str | os.PathLike[str] | None) -> Path:
    if dest is None:
        return cache_dir() / url_filename(url)
    path = Path(dest).expanduser()
    return path / url_filename(url) if path.is_dir() else path


def _check_hex(value: str | None, what: str, exact: int | None = None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not _HEX.match(value) or len(value) > 64 or (exact is not None and len(value) != exact):
        length = f"{exact} " if exact else "1 to 64 "
        raise ValueError(f"{what} must be {length}hex digits, got {value!r}")
    return value


def _hash_problem(actual: str, sha256: str | None, prefix: str | None) -> str | None:
    """``None`` if ``actual`` matches the expectations, else a sentence saying how it differs."""
    if sha256 is not None and actual != sha256:
        return f"sha256 mismatch (expected {sha256}, got {actual})"
    if prefix is not None and not actual.startswith(prefix):
        return f"sha256 mismatch (expected a hash starting {prefix}, got {actual})"
    return None


class _Progress:
    """A tqdm bar on a terminal; otherwise INFO log lines about every 10% (or every 50 MiB)."""

    def __init__(self, name: str, total: int | None, *, enabled: bool) -> None:
        self.name, self.total, self.done = name, total, 0
        self._next_log = 0.1
        self._last_log_bytes = 0
        self._start = time.monotonic()
        self._enabled = enabled
        self._bar = self._tqdm(name, total) if enabled else None

    @staticmethod
    def _tqdm(name: str, total: int | None) -> Any:
        if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
            return None
        try:
            from tqdm import tqdm  # optional dependency
        except ImportError:
            return None
        return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                    leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._enabled:
            self._log()

    def _log(self) -> None:
        if self.total:
            fraction = self.done / self.total
            if fraction >= self._next_log or self.done == self.total:
                logger.info("%s: %3.0f%% of %.1f MiB", self.name, 100 * fraction,
                            self.total / 2**20)
                self._next_log = (int(fraction * 10) + 1) / 10
        elif self.done - self._last_log_bytes >= 50 * 2**20:
            logger.info("%s: %.1f MiB", self.name, self.done / 2**20)
            self._last_log_bytes = self.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled and self.done:
            seconds = max(time.monotonic() - self._start, 1e-9)
            logger.info("%s: %.1f MiB in %.1f s", self.name, self.done / 2**20, seconds)
