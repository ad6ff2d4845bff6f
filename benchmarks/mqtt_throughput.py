"""How many messages a second the MQTT publisher sustains, end to end, on this machine.

Starts its own mosquitto on a free 127.0.0.1 port (or uses ``--broker HOST:PORT``), queues
``--messages`` event-sized JSON messages through :meth:`edgedet.mqtt.MqttPublisher.publish` as fast
as it can, and counts what a paho subscriber receives::

    python benchmarks/mqtt_throughput.py --messages 20000

Reports the rate the frame loop can queue at (what ``on_frame`` costs), the rate paho takes them
(published/s), the rate the subscriber receives, and drops (the queue holds ``--queue`` messages).
A benchmark, not a test: the figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("mqtt_throughput")

EVENT = {"type": "update", "id": "bench-1795266174.310-3", "camera": "bench", "tracker_id": 3, "label": "person",
         "class_id": 0, "score": 0.78, "top_score": 0.84, "box": [412.0, 188.5, 655.1, 702.9], "frame_width": 1280,
         "frame_height": 720, "start_time": 1795266174.31, "frame_time": 1795266179.9, "end_time": None, "frames": 41}


def start_broker(workdir: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = workdir / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_type error\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def main(argv: list[str] | None = None) -> int:
    import paho.mqtt.client as paho

    from edgedet.mqtt import MqttPublisher, MqttSettings, parse_broker

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--queue", type=int, default=1000, help="the publisher's queue bound (default: %(default)s)")
    p.add_argument("--qos", type=int, default=0, choices=[0, 1])
    p.add_argument("--broker", help="HOST[:PORT] of a broker to use instead of starting mosquitto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    broker = None
    if args.broker:
        host, port = parse_broker(args.broker)
    else:
        broker, port = start_broker(Path(tempfile.mkdtemp()))
        host = "127.0.0.1"
    received, last_rx = 0, 0.0

    def on_message(client, userdata, message) -> None:
        nonlocal received, last_rx
        received += 1
        last_rx = time.perf_counter()

    sub = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id="bench-sub")
    sub.on_message = on_message
    sub.on_connect = lambda c, *_: c.subscribe("bench/events", qos=args.qos)
    sub.connect(host, port)
    sub.loop_start()
    publisher = MqttPublisher(MqttSettings(host=host, port=port, prefix="bench", camera="bench", qos=args.qos,
                                           queue_size=args.queue, stats_interval_s=0, discovery=False)).start()
    try:
        while not (publisher.connected and sub.is_connected()):
            time.sleep(0.05)
        time.sleep(0.3)
        payload = json.dumps(EVENT, separators=(",", ":"))
        t0 = time.perf_counter()
        for _ in range(args.messages):
            publisher.publish("bench/events", payload)
        queued_s = time.perf_counter() - t0
        while publisher.published + publisher.dropped < args.messages and time.perf_counter() - t0 < 120:
            time.sleep(0.01)
        handed_s = time.perf_counter() - t0
        # Everything paho took should arrive (QoS 0 on loopback); stop when it has or it went quiet.
        while received < publisher.published and time.perf_counter() - max(last_rx, t0 + handed_s) < 5:
            time.sleep(0.01)
        received_s = (last_rx or time.perf_counter()) - t0
    finally:
        publisher.close()
        sub.disconnect()
        sub.loop_stop()
        if broker is not None:
            broker.terminate()
            broker.wait(10)
    result = {"messages": args.messages, "payload_bytes": len(payload), "qos": args.qos, "queue": args.queue,
              "queue_rate_per_s": round(args.messages / queued_s), "on_frame_cost_us_per_message": round(queued_s / args.messages * 1e6, 2),
              "published": publisher.published, "published_per_s": round(publisher.published / handed_s),
              "received": received, "received_per_s": round(received / received_s), "dropped": publisher.dropped}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
