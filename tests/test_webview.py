"""The live web view, opened in a real headless Chromium (Debian's /usr/bin/chromium) and over HTTP."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edgedet.loopmeter import LoopMeter, MeteredDetector
from edgedet.webview import WebView, parse_listen
from moving_scene import RedObjectDetector, render

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "t0k3n-for-tests"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=4000"]
WINDOW = (1100, 700)


class Feeder:
    """Plays the role of the camera loop: frames with the object in view, at ~20 FPS, into the hooks."""

    def __init__(self, *hooks) -> None:
        self.hooks, self.stop = hooks, threading.Event()
        self.detector = MeteredDetector(RedObjectDetector())
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            frame = render(20 + i % 20, 60)  # frames 20-39 of 60: the object is in view
            detections = self.detector(frame)
            for hook in self.hooks:
                hook(frame, detections, SimpleNamespace(index=i, timestamp=time.time()))
            i += 1
            self.stop.wait(0.05)


@pytest.fixture
def live_view():
    meter = LoopMeter()
    view = WebView(port=0, token=TOKEN, stats=meter.snapshot, camera="porch").start()
    feeder = Feeder(meter.on_frame, view.on_frame)
    meter.detector = feeder.detector
    feeder.thread.start()
    wait = time.monotonic() + 10
    while view.frames_seen < 3 and time.monotonic() < wait:
        time.sleep(0.02)
    yield view
    feeder.stop.set()
    feeder.thread.join(5)
    view.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           f"--window-size={WINDOW[0]},{WINDOW[1]}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs chromium (apt-get install -y chromium)")
def test_page_shows_the_stream_and_the_stats_in_chromium(live_view, tmp_path):
    url = live_view.url + f"?token={TOKEN}"
    assert live_view.encoded == 0, "frames were encoded with nobody watching"

    # The DOM after the page's script ran: the stream is set and the stats table is filled in.
    dom = chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="stream"' in dom.stdout and f"stream.mjpg?token={TOKEN}" in dom.stdout
    for key in ("frames", "detection_fps", "inference_ms", "dropped_frames", "viewers"):
        assert f'id="stat-{key}"' in dom.stdout, f"{key} missing from the page:\n{dom.stdout[-3000:]}"

    # The picture: the stream's area shows the scene (textured, not a flat placeholder) and the red
    # object with the drawn box; the stats panel beside it has text.
    shot = tmp_path / "shot.png"
    result = chromium(tmp_path, f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    image = cv2.imread(str(shot))
    assert image.shape[:2] == (WINDOW[1], WINDOW[0])
    stream = image[60:400, 20:650]  # where the 640x360 <img> sits below the header
    assert stream.std() > 10, "the stream area is flat: no frame shown"
    b, g, r = (stream[..., c].astype(int) for c in range(3))
    red = (r > 150) & (g < 80) & (b < 80)
    assert red.sum() > 2000, "the object is not in the stream"
    stats_panel = image[60:400, 670:1000]
    assert stats_panel.std() > 10, "the stats panel is empty"
    assert live_view.encoded > 0


def test_healthz_token_and_stats(live_view):
    base = live_view.url
    assert get(base + "healthz") == (200, b"ok\n")  # no token needed: it says nothing else
    for path in ("", "stats", "stream.mjpg"):
        status, _ = get(base + path)
        assert status == 401, path
    assert get(base + "stats?token=wrong")[0] == 401
    status, body = get(base + "stats", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    stats = json.loads(body)
    assert stats["camera"] == "porch" and stats["frames"] > 0 and stats["inference_ms"] is not None
    status, page = get(base + f"?token={TOKEN}")
    assert status == 200 and b"stream.mjpg" in page
    assert get(base + f"nothing?token={TOKEN}")[0] == 404


def test_encodes_only_while_watched_and_the_stream_is_mjpeg(live_view):
    time.sleep(0.3)
    assert live_view.encoded == 0
    with urllib.request.urlopen(live_view.url + f"stream.mjpg?token={TOKEN}", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        head = r.read(4096)
        assert head.startswith(b"--edgedetframe\r\nContent-Type: image/jpeg")
        start = head.index(b"\xff\xd8")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        jpeg = head[start:] + r.read(max(0, length - len(head[start:])))
        image = cv2.imdecode(np.frombuffer(jpeg[:length], np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[:2] == (360, 640)
        assert live_view.watchers == 1
    wait = time.monotonic() + 5
    while live_view.watchers and time.monotonic() < wait:  # the server sees the viewer leave on its next write
        time.sleep(0.05)
    assert live_view.watchers == 0
    time.sleep(0.3)  # an encode that started just before the viewer left may still finish
    encoded = live_view.encoded
    time.sleep(0.5)
    assert live_view.encoded == encoded, "encoding went on after the viewer left"


def test_healthz_is_503_without_frames_and_binds_loopback_by_default():
    view = WebView(port=0).start()
    try:
        assert view.host == "127.0.0.1" and view._server.server_address[0] == "127.0.0.1"
        assert get(view.url + "healthz")[0] == 503
        assert get(view.url)[0] == 200  # no token set: open (on loopback only)
    finally:
        view.close()


def test_parse_listen():
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("8080") == ("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:8081") == ("0.0.0.0", 8081)
    assert parse_listen("[::1]:8082") == ("::1", 8082)
    with pytest.raises(ValueError):
        parse_listen(":http")
