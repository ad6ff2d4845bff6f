"""The camera loop: frames in from a camera, a stream or a file; detections out to a window, a
video file and JSON lines. numpy and OpenCV only (``picamera2`` is imported when a Pi camera is
opened).

The pieces, each usable alone::

    source = open_source("picamera")        # or 0, "/dev/video0", "clip.mp4", "rtsp://...", a GStreamer pipeline
    stats = run_loop(detector, source, max_frames=500, video_out="out.mp4", jsonl_out="out.jsonl")
    print(stats.summary())

==========================  ==========================================================================
module                      job
==========================  ==========================================================================
:mod:`.sources`             :class:`FrameSource` and the OpenCV capture (:class:`VideoCaptureSource`)
:mod:`.picamera`            the Raspberry Pi camera (:class:`PiCameraSource`, via picamera2)
:mod:`.specs`               :func:`open_source`: which source ``0``, ``"clip.mp4"``, ``"rtsp://..."`` name
:mod:`.reader`              :class:`LatestFrameReader`: capture on a thread, newest frame wins, reopen
                            what fails; :func:`iter_frames` for custom loops
:mod:`.writers`             :class:`VideoFileWriter`, :class:`JsonLinesWriter`
:mod:`.overlay`             :func:`overlay`: detections and a status line drawn on a frame
:mod:`.window`              :func:`display_available` and the loop's window
:mod:`.signals`             SIGINT/SIGTERM end the loop after the current frame
:mod:`.stats`               :class:`LoopStats` and the running latency/FPS figures
:mod:`.pipelined`           the throughput mode's stage threads (prepare, inference) and their hand-offs
:mod:`.loop`                :func:`run_loop`, which ties them together
==========================  ==========================================================================

Sources are opened (and reopened after a failure) by whoever reads them: the reader, or
``with source:``. A slow detector always gets the freshest image; the frames it had no time for
are dropped and counted. :func:`run_loop` runs one frame at a time, or with ``mode="throughput"``
overlaps frames on stage threads (preparing the next and recording the last while one is in
inference). It ends on ``max_frames``, the end of a file, a ``stop_event``, ``q``/Esc in the
window, or SIGINT/SIGTERM (Ctrl-C, ``systemctl stop``), and closes its writers in every case, so
the recorded video is always playable.
"""
from edgedet.video.loop import run_loop
from edgedet.video.overlay import overlay
from edgedet.video.picamera import PiCameraSource, picamera_available
from edgedet.video.reader import CapturedFrame, LatestFrameReader, iter_frames
from edgedet.video.sources import FrameSource, SourceError, VideoCaptureSource
from edgedet.video.specs import _opencv_has, default_source, jetson_csi_pipeline, open_source
from edgedet.video.stats import LoopStats
from edgedet.video.window import display_available
from edgedet.video.writers import JsonLinesWriter, VideoFileWriter

__all__ = [
    "CapturedFrame", "FrameSource", "JsonLinesWriter", "LatestFrameReader", "LoopStats", "PiCameraSource",
    "SourceError", "VideoCaptureSource", "VideoFileWriter", "default_source", "display_available",
    "iter_frames", "jetson_csi_pipeline", "open_source", "overlay", "picamera_available", "run_loop",
]
