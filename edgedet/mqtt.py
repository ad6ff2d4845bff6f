"""Publish what the camera loop sees to an MQTT broker (Home Assistant, Node-RED...), Frigate-style.

Topics (``<prefix>`` defaults to ``edgedet``; see examples/raspberrypi/README.md for the payloads):

* ``<prefix>/available``: ``online`` / ``offline`` (retained; ``offline`` is also the last will).
* ``<prefix>/<camera>/<label>`` and ``<prefix>/<camera>/all``: objects in view now (retained).
* ``<prefix>/events``: JSON ``new`` / ``update`` / ``end`` records of tracked objects.
* ``<prefix>/<camera>/<label>/snapshot``: a JPEG of each new object (``snapshots=True``).
* ``<prefix>/stats``: JSON figures every ``stats_interval_s``.
* ``homeassistant/...``: MQTT discovery of a count and an occupancy sensor per label.

Publishing never blocks the frame loop: :meth:`MqttPublisher.on_frame` only puts messages on a
bounded queue, which a thread hands to paho while connected; when the broker is away the queue
keeps the newest ``queue_size`` messages and counts what it had to drop, and paho reconnects with
a doubling delay. Needs ``paho-mqtt`` (``pip install "edgedet[mqtt]"``)::

    publisher = MqttPublisher(MqttSettings(host="broker.lan", camera="door"), stats=meter.snapshot)
    publisher.start()
    run_loop(detector, source, on_frame=publisher.on_frame)
    publisher.close()
"""
from __future__ import annotations

import collections
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edgedet.detections import Detections
from edgedet.events import TrackEvent, TrackEvents

__all__ = ["MqttPublisher", "MqttSettings", "parse_broker"]

log = logging.getLogger(__name__)

DEFAULT_PORT, DEFAULT_TLS_PORT = 1883, 8883


def parse_broker(text: str, *, tls: bool = False) -> tuple[str, int]:
    """``"HOST[:PORT]"`` (``"[::1]:1883"`` for IPv6) → ``(host, port)``; the port defaults to 1883
    (8883 with TLS)."""
    text = text.strip()
    port: int | None = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host = text
    if not host:
        raise ValueError(f"an MQTT broker is HOST[:PORT], got {text!r}")
    port = port if port is not None else (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"MQTT port out of range: {port}")
    return host, port


def _slug(text: str) -> str:
    """A topic level / Home Assistant object id: letters, digits, ``_`` and ``-`` only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "_"


@dataclass
class MqttSettings:
    """Where and what to publish. ``password`` is never logged nor shown in ``repr``.

    Attributes:
        host, port: the broker.
        prefix: first topic level (Frigate uses ``frigate``).
        camera: the camera's name in topics and events.
        client_id: MQTT client id (default ``edgedet-<camera>-<hostname>``; must be unique per broker).
        username, password: broker credentials.
        tls: connect with TLS; ``ca_certs`` (default: the system's), ``certfile``/``keyfile`` for a
            client certificate, ``tls_insecure`` skips the host-name check (self-signed test setups).
        qos: QoS of counts, events and stats (availability always uses 1). With 0, messages handed
            to a connection that then breaks are lost uncounted; 1 has paho resend them.
        queue_size: messages kept while the broker is away; older ones are dropped (and counted).
        stats_interval_s: how often ``<prefix>/stats`` is published (0: never).
        snapshots: publish a JPEG crop of each new object; ``snapshot_width`` bounds its width.
        discovery: publish Home Assistant discovery configs under ``discovery_prefix``.
        update_interval_s, max_missed_frames: see :class:`edgedet.events.TrackEvents`.
        reconnect_min_s, reconnect_max_s: reconnection delay, doubling between the two.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    prefix: str = "edgedet"
    camera: str = "camera"
    client_id: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    tls_insecure: bool = False
    keepalive: int = 30
    qos: int = 0
    queue_size: int = 1000
    stats_interval_s: float = 10.0
    snapshots: bool = False
    snapshot_width: int = 640
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    update_interval_s: float = 1.0
    max_missed_frames: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {self.qos}")
        if self.queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if not self.prefix or any(c in self.prefix for c in "#+") or self.prefix.endswith("/"):
            raise ValueError(f"bad topic prefix {self.prefix!r}")
        self.camera = _slug(self.camera)
        if self.client_id is None:
            self.client_id = f"edgedet-{self.camera}-{_slug(socket.gethostname())}"


class _Message:
    __slots__ = ("topic", "payload", "qos", "retain")

    def __init__(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> None:
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain


class MqttPublisher:
    """Publishes counts, events, snapshots, stats and availability; see the module docstring.

    Args:
        settings: the broker and what to publish.
        stats: returns the loop's figures for ``<prefix>/stats`` (e.g. ``LoopMeter.snapshot``);
            called from the publisher's thread.

    Counters (any time, also in :meth:`stats`): ``published``, ``dropped`` (queue overflow or
    refused by paho), ``reconnects``, ``connected``.
    """

    def __init__(self, settings: MqttSettings, *, stats: Callable[[], dict[str, Any]] | None = None) -> None:
        try:
            import paho.mqtt.client as paho
        except ImportError as exc:
            raise ImportError('MQTT output needs paho-mqtt: pip install "edgedet[mqtt]"') from exc
        self.settings = settings
        self._stats_source = stats
        s = settings
        self.topic_available = f"{s.prefix}/available"
        self.topic_events = f"{s.prefix}/events"
        self.topic_stats = f"{s.prefix}/stats"
        self.published = self.dropped = self.reconnects = self.connections = 0
        self.connected = False
        self._events = TrackEvents(s.camera, max_missed_frames=s.max_missed_frames,
                                   update_interval_s=s.update_interval_s)
        self._counts: dict[str, int] = {}       # label -> count last published
        self._discovered: set[str] = set()
        self._active = 0  # open tracks, for the stats thread (the events belong to the frame loop)
        self._queue: collections.deque[_Message] = collections.deque()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.time()

        client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id=s.client_id,
                             protocol=paho.MQTTv311)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set(ca_certs=s.ca_certs, certfile=s.certfile, keyfile=s.keyfile,
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(s.tls_insecure)
        client.will_set(self.topic_available, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=max(1, int(s.reconnect_min_s)), max_delay=max(1, int(s.reconnect_max_s)))
        # paho's own queue is a second buffer behind ours: bound it too.
        client.max_queued_messages_set(s.queue_size)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self._failed_attempts = 0
        self._client = client

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> MqttPublisher:
        """Connect in the background (a broker that is not there yet is retried, never waited for)."""
        if self._thread is not None:
            raise RuntimeError("an MqttPublisher starts once")
        s = self.settings
        log.info("MQTT: publishing to %s:%d as %s (prefix %r, camera %r%s)", s.host, s.port, s.client_id,
                 s.prefix, s.camera, ", TLS" if s.tls else "")
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._send_loop, name="edgedet-mqtt", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """End open events, say ``offline``, send what is queued (up to ``timeout`` s) and disconnect."""
        if self._closing.is_set():
            return
        for event in self._events.close():
            self._put_event(event)
        self._enqueue(self.topic_available, "offline", qos=1, retain=True)
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._queue and self.connected and time.monotonic() < deadline:
                self._cond.wait(0.05)
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, deadline - time.monotonic()))
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        if self._queue:
            log.warning("MQTT: %d messages not sent at exit (broker unreachable)", len(self._queue))
        log.info("MQTT: closed; published %d, dropped %d, reconnects %d", self.published, self.dropped,
                 self.reconnects)

    def __enter__(self) -> MqttPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the frame hook --------------------------------------------------------------------------

    def on_frame(self, frame: np.ndarray, detections: Detections, info: Any) -> None:
        """``run_loop``'s per-frame hook: queue counts (when they change), events, snapshots.

        ``info`` is the loop's ``CapturedFrame`` (its ``timestamp`` times the events). Never blocks
        on the network.
        """
        s = self.settings
        frame_time = float(getattr(info, "timestamp", None) or time.time())
        counts: dict[str, int] = dict.fromkeys(self._counts, 0)
        for name in detections.class_names:
            counts[name] = counts.get(name, 0) + 1
        counts["all"] = len(detections)
        for label, count in counts.items():
            if self._counts.get(label) != count:
                with self._cond:  # _on_connect reads the counts from paho's thread
                    self._counts[label] = count
                self._enqueue(f"{s.prefix}/{s.camera}/{_slug(label)}", str(count), qos=s.qos, retain=True)
            if label not in self._discovered and s.discovery:
                self._discovered.add(label)
                for topic, payload in self._discovery(label):
                    self._enqueue(topic, payload, qos=1, retain=True)
        height, width = frame.shape[:2]
        for event in self._events.update(detections, frame_time=frame_time, frame_size=(width, height)):
            self._put_event(event)
            if event.type == "new" and s.snapshots:
                self._put_snapshot(frame, event)
        self._active = len(self._events.active)

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False, qos: int | None = None) -> None:
        """Queue any message (e.g. your own topic under the prefix); never blocks."""
        self._enqueue(topic, payload, qos=self.settings.qos if qos is None else qos, retain=retain)

    # -- what is published -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The stats payload: the loop's figures (``stats=``) and the publisher's own."""
        with self._cond:
            queued = len(self._queue)
        loop = self._stats_source() if self._stats_source is not None else {}
        return {"camera": self.settings.camera, "timestamp": round(time.time(), 3), **loop,
                "active_objects": self._active,
                "mqtt": {"connected": self.connected, "queued": queued, "published": self.published,
                         "dropped": self.dropped, "reconnects": self.reconnects,
                         "uptime_s": round(time.time() - self._started, 1)}}

    def _put_event(self, event: TrackEvent) -> None:
        self._enqueue(self.topic_events, json.dumps(event.to_dict(), separators=(",", ":")), qos=self.settings.qos)

    def _put_snapshot(self, frame: np.ndarray, event: TrackEvent) -> None:
        x1, y1, x2, y2 = event.box
        mx, my = (x2 - x1) * 0.25, (y2 - y1) * 0.25  # some context around the object
        h, w = frame.shape[:2]
        crop = frame[max(0, int(y1 - my)):min(h, int(y2 + my) + 1), max(0, int(x1 - mx)):min(w, int(x2 + mx) + 1)]
        if crop.size == 0:
            return
        if crop.shape[1] > self.settings.snapshot_width:
            scale = self.settings.snapshot_width / crop.shape[1]
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            self._enqueue(f"{self.settings.prefix}/{self.settings.camera}/{_slug(event.label)}/snapshot",
                          jpeg.tobytes(), qos=self.settings.qos)

    def _discovery(self, label: str) -> list[tuple[str, str]]:
        """Home Assistant MQTT discovery: a count sensor and an occupancy binary sensor for ``label``."""
        s = self.settings
        node = _slug(s.client_id or s.prefix)
        object_id = f"{s.camera}_{_slug(label)}"
        device = {"identifiers": [node], "name": f"edgedet {s.camera}", "manufacturer": "edgedet",
                  "model": "EfficientDet camera loop"}
        common = {"state_topic": f"{s.prefix}/{s.camera}/{_slug(label)}", "availability_topic": self.topic_available,
                  "payload_available": "online", "payload_not_available": "offline", "device": device}
        count = {**common, "name": f"{s.camera} {label} count", "unique_id": f"{node}_{object_id}_count",
                 "state_class": "measurement", "icon": "mdi:counter"}
        occupancy = {**common, "name": f"{s.camera} {label} occupancy", "unique_id": f"{node}_{object_id}_occupancy",
                     "device_class": "occupancy", "value_template": "{{ 'ON' if value | int > 0 else 'OFF' }}"}
        base = s.discovery_prefix
        return [(f"{base}/sensor/{node}/{object_id}_count/config", json.dumps(count)),
                (f"{base}/binary_sensor/{node}/{object_id}_occupancy/config", json.dumps(occupancy))]

    # -- the queue -------------------------------------------------------------------------------

    def _enqueue(self, topic: str, payload: bytes | str, *, qos: int, retain: bool = False) -> None:
        with self._cond:
            if len(self._queue) >= self.settings.queue_size:
                self._queue.popleft()  # the oldest goes: the newest state matters most
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("MQTT: queue full (%d), dropping the oldest messages (%d dropped so far)",
                                self.settings.queue_size, self.dropped)
            self._queue.append(_Message(topic, payload, qos, retain))
            self._cond.notify_all()

    def _send_loop(self) -> None:
        import paho.mqtt.client as paho

        interval = self.settings.stats_interval_s
        next_stats = time.monotonic() + interval if interval > 0 else float("inf")
        while not self._closing.is_set():
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + interval
                try:
                    self._enqueue(self.topic_stats, json.dumps(self.stats(), separators=(",", ":")),
                                  qos=self.settings.qos)
                except Exception:  # a stats source that fails must not stop publishing
                    log.exception("MQTT: cannot build the stats")
            with self._cond:
                if not (self._queue and self.connected):
                    self._cond.wait(min(0.5, max(0.01, next_stats - now)))
                    continue
                message = self._queue.popleft()
            try:
                info = self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
                rc = info.rc
            except Exception as exc:  # e.g. a payload paho refuses: drop it, keep going
                log.warning("MQTT: cannot publish to %s: %s", message.topic, exc)
                rc = None
            with self._cond:
                if rc == paho.MQTT_ERR_SUCCESS:
                    self.published += 1
                elif rc == paho.MQTT_ERR_NO_CONN:
                    self._queue.appendleft(message)  # the connection just went: send it after reconnecting
                    self.connected = False
                else:
                    self.dropped += 1
                self._cond.notify_all()

    # -- paho callbacks (its network thread) -----------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("MQTT: %s:%d refused the connection: %s", self.settings.host, self.settings.port, reason_code)
            return
        self.connections += 1
        self._failed_attempts = 0
        if self.connections > 1:
            self.reconnects += 1
            log.info("MQTT: reconnected (reconnect %d; %d messages queued)", self.reconnects, len(self._queue))
        else:
            log.info("MQTT: connected to %s:%d", self.settings.host, self.settings.port)
        # Straight to paho, ahead of the queue: a broker that restarted lost its retained state.
        client.publish(self.topic_available, "online", qos=1, retain=True)
        s = self.settings
        with self._cond:
            counts = dict(self._counts)
        for label, count in counts.items():
            if s.discovery:
                for topic, payload in self._discovery(label):
                    client.publish(topic, payload, qos=1, retain=True)
            client.publish(f"{s.prefix}/{s.camera}/{_slug(label)}", str(count), qos=s.qos, retain=True)
        with self._cond:
            self.connected = True
            self._cond.notify_all()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._failed_attempts += 1
        n = self._failed_attempts
        if n == 1 or n % 10 == 0:  # once, then now and then: a broker down for hours must not flood the log
            log.warning("MQTT: cannot reach %s:%d (attempt %d); retrying, up to %g s apart", self.settings.host,
                        self.settings.port, n, self.settings.reconnect_max_s)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            was, self.connected = self.connected, False
        if was and not self._closing.is_set():
            log.warning("MQTT: lost the broker (%s); queueing up to %d messages and reconnecting", reason_code,
                        self.settings.queue_size)
