"""edgedet.hub and edgedet._atomic: downloads, hash checks, caching, atomic writes.

No network but a local HTTP server on 127.0.0.1.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import socket
import threading
from pathlib import Path

import pytest

from edgedet import hub
from edgedet._atomic import atomic_write_bytes, atomic_write_text, atomic_writer

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several read chunks' worth of progress


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves ``directory`` and counts requests; ``/short/<name>`` sends less than it promises."""

    requests: list[str]  # set per server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.startswith("/short/"):
            body = b"x" * 1000
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) * 10))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        handler = type("Handler", (CountingHandler,), {"requests": []})
        self.requests: list[str] = handler.requests
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy in the environment must not capture requests to the local test server.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(root)
    yield srv
    srv.close()


@pytest.fixture
def served_file(server):
    """A file named like effdet's releases: ``<stem>-<first 8 hex of sha256>.pth``."""
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    name = f"weights_x-{digest[:8]}.pth"
    (server.root / name).write_bytes(PAYLOAD)
    return name, digest


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---------------------------------------------------------------------------------------- download


def test_download_then_cache_hit_without_network(server, served_file, tmp_path):
    name, digest = served_file
    dest = tmp_path / "cache" / name
    path = hub.download(server.url(name), sha256_prefix=digest[:8], dest=dest)
    assert path == dest and path.read_bytes() == PAYLOAD
    assert len(server.requests) == 1

    again = hub.download(server.url(name), sha256_prefix=digest[:8], dest=dest)
    assert again == dest
    assert len(server.requests) == 1  # verified from disk, no request
    assert listing(dest.parent) == [name]  # no leftover .part files


def test_download_full_sha256_and_dest_directory(server, served_file, tmp_path):
    name, digest = served_file
    folder = tmp_path / "dl"
    folder.mkdir()
    path = hub.download(server.url(name), sha256=digest.upper(), dest=folder, progress=False)
    assert path == folder / name
    assert hub.sha256_file(path) == digest


@pytest.mark.parametrize("kind", ["prefix", "full"])
def test_hash_mismatch_raises_and_leaves_nothing(server, served_file, tmp_path, kind):
    name, digest = served_file
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    kwargs = {"sha256_prefix": wrong[:8]} if kind == "prefix" else {"sha256": wrong}
    dest = tmp_path / "cache" / name
    with pytest.raises(hub.DownloadError, match="sha256 mismatch") as info:
        hub.download(server.url(name), dest=dest, **kwargs)
    assert digest in str(info.value)  # says what it got
    assert listing(dest.parent) == []


def test_cached_file_with_wrong_hash_is_downloaded_again(server, served_file, tmp_path, caplog):
    name, digest = served_file
    dest = tmp_path / name
    dest.write_bytes(b"stale or corrupt")
    with caplog.at_level(logging.WARNING, logger="edgedet.hub"):
        path = hub.download(server.url(name), sha256_prefix=digest[:8], dest=dest)
    assert path.read_bytes() == PAYLOAD
    assert len(server.requests) == 1
    assert "does not match" in caplog.text


def test_connection_closed_mid_body_raises_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "cache" / "big.pth"
    with pytest.raises(hub.DownloadError, match="bytes") as info:
        hub.download(server.url("short/big.pth"), dest=dest, timeout=10)
    assert "nothing was saved" in str(info.value)
    assert listing(dest.parent) == []


def test_http_404_is_clear(server, tmp_path):
    dest = tmp_path / "cache" / "missing.pth"
    with pytest.raises(hub.DownloadError, match="HTTP 404") as info:
        hub.download(server.url("missing.pth"), dest=dest)
    assert "does not exist" in str(info.value) and "missing.pth" in str(info.value)
    assert listing(dest.parent) == []


def test_unreachable_host_is_clear(tmp_path):
    with socket.socket() as s:  # a port nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(hub.DownloadError, match="could not reach"):
        hub.download(f"http://127.0.0.1:{port}/x.pth", dest=tmp_path / "x.pth", timeout=5)
    assert listing(tmp_path) == []


def test_keyboard_interrupt_removes_partial_file(server, served_file, tmp_path, monkeypatch):
    name, digest = served_file

    def interrupt(self, n):
        raise KeyboardInterrupt

    monkeypatch.setattr(hub._Progress, "update", interrupt)
    dest = tmp_path / "cache" / name
    with pytest.raises(KeyboardInterrupt):
        hub.download(server.url(name), sha256_prefix=digest[:8], dest=dest)
    assert listing(dest.parent) == []


def test_file_url(tmp_path):
    source = tmp_path / "src" / "model-abc.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    path = hub.download(source.as_uri(), sha256=digest, dest=tmp_path / "out" / "model.bin")
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(hub.DownloadError, match="could not read"):
        hub.download((tmp_path / "nope.bin").as_uri(), dest=tmp_path / "out" / "nope.bin")


def test_cache_dir_env_override_and_default_dest(server, served_file, tmp_path, monkeypatch):
    name, digest = served_file
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "my-cache"))
    assert hub.cache_dir() == tmp_path / "my-cache"
    path = hub.download(server.url(name), sha256_prefix=digest[:8])
    assert path == tmp_path / "my-cache" / name


def test_cache_dir_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEDET_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.cache_dir() == tmp_path / ".cache" / "edgedet"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "edgedet"


def test_progress_logs_without_a_terminal(server, served_file, tmp_path, caplog):
    name, digest = served_file
    with caplog.at_level(logging.INFO, logger="edgedet.hub"):
        hub.download(server.url(name), sha256_prefix=digest[:8], dest=tmp_path / name)
    assert "100%" in caplog.text


def test_bad_arguments():
    with pytest.raises(ValueError, match="hex"):
        hub.download("http://127.0.0.1:1/a.pth", sha256="abc")
    with pytest.raises(ValueError, match="hex"):
        hub.download("http://127.0.0.1:1/a.pth", sha256_prefix="not-hex")
    with pytest.raises(ValueError, match="file name"):
        hub.download("http://127.0.0.1:1/")


@pytest.mark.parametrize("name, expected", [
    ("tf_efficientdet_d0_34-f153e0cf.pth", "f153e0cf"),
    ("tf_efficientdet_d7x-f390b87c.pth", "f390b87c"),
    ("/some/dir/model-0123456789abcdef.pt", "0123456789abcdef"),
    ("model.pth", None),
    ("model-v2.pth", None),
    ("model-F153E0CF.pth", None),
])
def test_hash_prefix_from_name(name, expected):
    assert hub.hash_prefix_from_name(name) == expected


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert hub.sha256_file(path, chunk_size=1000) == hashlib.sha256(PAYLOAD).hexdigest()


# ----------------------------------------------------------------------------------------- atomic


def test_atomic_writer_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_writer(target, "w") as f:
        f.write('{"a": 1}')
        assert not target.exists()  # invisible until complete
    assert target.read_text() == '{"a": 1}'
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    atomic_write_text(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    assert listing(target.parent) == ["out.json"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_writer_keeps_old_file_on_error(tmp_path, error):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_writer(target) as f:
            f.write(b"half")
            raise error("boom")
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["out.bin"]


def test_atomic_writer_exclusive_and_bad_mode(tmp_path):
    target = tmp_path / "once.bin"
    with atomic_writer(target, "xb") as f:
        f.write(b"1")
    with pytest.raises(FileExistsError):
        with atomic_writer(target, "xb") as f:
            f.write(b"2")
    assert target.read_bytes() == b"1"
    with pytest.raises(ValueError):
        with atomic_writer(target, "ab"):
            pass
    assert listing(tmp_path) == ["once.bin"]
