"""A live view of the camera loop in a browser: annotated frames as MJPEG, the loop's figures as JSON.

Standard library only (``http.server`` on its own threads) plus OpenCV for the JPEGs::

    view = WebView(port=8080, stats=meter.snapshot).start()   # http://127.0.0.1:8080/
    run_loop(detector, source, on_frame=view.on_frame)
    view.close()

Routes: ``/`` (the page: the stream and the stats, refreshed every second), ``/stream.mjpg``,
``/stats`` (JSON), ``/healthz`` (``200 ok`` while frames arrive, ``503`` when they stopped; open
without the token so that a supervisor can probe it, and it says nothing else).

Secure by default: it binds 127.0.0.1 unless given a host; with ``token`` every route but
``/healthz`` wants ``?token=...`` or ``Authorization: Bearer ...`` (401 otherwise). Frames are
annotated and encoded on the server's own thread, and only while someone watches the stream: the
frame loop only hands over a reference.
"""
from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from edgedet.detections import Detections

__all__ = ["WebView", "parse_listen"]

log = logging.getLogger(__name__)

BOUNDARY = "edgedetframe"


def parse_listen(text: str) -> tuple[str, int]:
    """``":8080"`` → ``("127.0.0.1", 8080)``; ``"0.0.0.0:8080"`` listens on every interface."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--http is [HOST]:PORT (e.g. :8080 or 0.0.0.0:8080), got {text!r}") from None
    if not 0 <= number < 65536:
        raise ValueError(f"port out of range: {number}")
    return host, number


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgedet: {camera}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; background: #111; color: #eee; }}
header {{ padding: .5rem 1rem; background: #222; }}
main {{ display: flex; flex-wrap: wrap; gap: 1rem; padding: 1rem; }}
#stream {{ max-width: 100%; background: #000; min-width: 320px; min-height: 180px; }}
table {{ border-collapse: collapse; font-variant-numeric: tabular-nums; }}
td {{ padding: .15rem .6rem; border-bottom: 1px solid #333; }}
</style></head>
<body><header><b>edgedet</b> &middot; {camera}</header>
<main><img id="stream" alt="live stream">
<table id="stats"><tbody><tr><td>stats</td><td id="state">loading</td></tr></tbody></table></main>
<script>
const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
// Set after load: a never-ending MJPEG response would otherwise hold the page's load event.
window.addEventListener("load", () => {{ document.getElementById("stream").src = "stream.mjpg" + q; }});
function cell(text) {{ const td = document.createElement("td"); td.textContent = text; return td; }}
async function refresh() {{
  try {{
    const stats = await (await fetch("stats" + q, {{cache: "no-store"}})).json();
    const body = document.createElement("tbody");
    for (const [key, value] of Object.entries(stats)) {{
      const tr = document.createElement("tr"); tr.id = "stat-" + key;
      tr.append(cell(key), cell(typeof value === "object" && value !== null ? JSON.stringify(value) : String(value)));
      body.append(tr);
    }}
    document.getElementById("stats").replaceChildren(body);
  }} catch (e) {{ document.getElementById("state").textContent = "no stats: " + e; }}
}}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""


class WebView:
    """Serves the live view; see the module docstring.

    Args:
        host, port: where to listen (port 0: any free port; see :attr:`port`).
        token: required on every route but ``/healthz`` when set.
        stats: the loop's figures for ``/stats`` (e.g. ``LoopMeter.snapshot``).
        camera: the name shown on the page.
        max_fps: the stream's frame rate at most (frames in between are not encoded).
        jpeg_quality: 0-100.
        stale_after_s: ``/healthz`` says 503 when no frame came for this long.
        annotate: draws a frame's detections (default: ``edgedet.video.overlay``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, token: str | None = None,
                 stats: Callable[[], dict[str, Any]] | None = None, camera: str = "camera", max_fps: float = 10.0,
                 jpeg_quality: int = 75, stale_after_s: float = 10.0,
                 annotate: Callable[[np.ndarray, Detections], np.ndarray] | None = None) -> None:
        self.host, self.token, self.camera = host, token or None, camera
        self.stats_source = stats
        self.min_interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self.jpeg_quality, self.stale_after_s = int(jpeg_quality), float(stale_after_s)
        self._annotate = annotate
        self.watchers = 0
        self.encoded = 0          # frames encoded (stays 0 while nobody watches)
        self.frames_seen = 0
        self._latest: tuple[np.ndarray, Detections] | None = None
        self._latest_id = 0
        self._last_frame: float | None = None
        self._jpeg: bytes | None = None
        self._jpeg_id = 0
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """The page's address (without the token)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> WebView:
        """Serve on background threads."""
        for target, name in ((self._server.serve_forever, "edgedet-http"), (self._encode_loop, "edgedet-jpeg")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.token:
            log.warning("web view on %s without --http-token: anyone on the network can watch", self.host)
        log.info("web view: %s%s", self.url, " (token required)" if self.token else "")
        return self

    def close(self) -> None:
        """Stop serving (open streams end)."""
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=2.0)

    def __enter__(self) -> WebView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the frame hook --------------------------------------------------------------------------

    def on_frame(self, frame: np.ndarray, detections: Detections, info: Any = None) -> None:
        """``run_loop``'s per-frame hook: keeps a reference to the newest frame (no copy, no encoding)."""
        with self._cond:
            self._latest = (frame, detections)
            self._latest_id += 1
            self.frames_seen += 1
            self._last_frame = time.monotonic()
            if self.watchers:
                self._cond.notify_all()

    def healthy(self) -> bool:
        """A frame came within ``stale_after_s``."""
        last = self._last_frame
        return last is not None and time.monotonic() - last < self.stale_after_s

    def stats(self) -> dict[str, Any]:
        """The ``/stats`` payload."""
        loop = self.stats_source() if self.stats_source is not None else {}
        return {"camera": self.camera, **loop, "viewers": self.watchers, "frames_encoded": self.encoded}

    # -- encoding (own thread, only while watched) -----------------------------------------------

    def _encode_loop(self) -> None:
        annotate = self._annotate
        if annotate is None:
            from edgedet.video import overlay

            def annotate(frame: np.ndarray, detections: Detections) -> np.ndarray:
                return overlay(frame, detections, text=self.camera)
        done_id = 0
        while not self._closing.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._closing.is_set()
                                    or (self.watchers > 0 and self._latest_id != done_id), timeout=1.0)
                if self._closing.is_set() or self.watchers == 0 or self._latest is None or self._latest_id == done_id:
                    continue
                (frame, detections), done_id = self._latest, self._latest_id
            started = time.monotonic()
            try:
                ok, jpeg = cv2.imencode(".jpg", annotate(frame, detections),
                                        [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            except Exception:  # a bad frame must not end the stream
                log.exception("web view: cannot encode a frame")
                continue
            if ok:
                with self._cond:
                    self._jpeg, self._jpeg_id = jpeg.tobytes(), self._jpeg_id + 1
                    self.encoded += 1
                    self._cond.notify_all()
            self._closing.wait(max(0.0, self.min_interval - (time.monotonic() - started)))

    def _next_jpeg(self, after: int) -> tuple[bytes, int] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._closing.is_set() or (self._jpeg is not None and self._jpeg_id != after),
                                timeout=5.0)
            if self._closing.is_set() or self._jpeg is None or self._jpeg_id == after:
                return None
            return self._jpeg, self._jpeg_id

    # -- HTTP ------------------------------------------------------------------------------------

    def _authorized(self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> bool:
        if self.token is None:
            return True
        given = query.get("token", [""])[0]
        header = handler.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer "):]
        return hmac.compare_digest(given.encode(), self.token.encode())  # constant time

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        view = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "edgedet"
            sys_version = ""

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
                # The query string can hold the token: log the path only.
                log.debug("%s %s", self.address_string(), self.path.split("?", 1)[0])

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                path = parts.path
                if path == "/healthz":
                    ok = view.healthy()
                    self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "text/plain",
                               b"ok\n" if ok else b"no frames\n")
                    return
                if not view._authorized(self, parse_qs(parts.query)):
                    self._send(HTTPStatus.UNAUTHORIZED, "text/plain", b"token required\n",
                               {"WWW-Authenticate": 'Bearer realm="edgedet"'})
                    return
                if path in ("/", "/index.html"):
                    self._send(HTTPStatus.OK, "text/html; charset=utf-8",
                               PAGE.format(camera=_html(view.camera)).encode())
                elif path == "/stats":
                    self._send(HTTPStatus.OK, "application/json", json.dumps(view.stats()).encode())
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

            def _send(self, status: HTTPStatus, kind: str, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                with view._cond:
                    view.watchers += 1
                    view._cond.notify_all()
                last = 0
                try:
                    while not view._closing.is_set():
                        item = view._next_jpeg(last)
                        if item is None:
                            continue
                        jpeg, last = item
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    pass  # the viewer left
                finally:
                    with view._cond:
                        view.watchers -= 1

        return Handler


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
