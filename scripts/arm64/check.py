"""The whole arm64 check: artifacts built on x86 give the same detections on (emulated) aarch64.

    python scripts/arm64/check.py                      # prints the table; exit 1 on a disagreement
    python scripts/arm64/check.py --out report.json    # also the full report

Steps (the x86 side needs the workstation install, ``edgedet[all]``; the arm64 side gets only the
runtime, as a device would):

1. export lite0 and d0 to ONNX, OpenVINO and TFLite at FP32 and INT8 (``converters.convert``,
   the trained reference weights when ``$EDGEDET_CACHE/reference/<variant>/best.pth`` exists, else
   the test suite's realistic random weights), cached and reused while up to date; pack a bundle;
2. render a few synthetic scenes (``edgedet.data.synthetic``) as PNG frames and a short video;
3. x86: unpack the bundle (``python -m edgedet.bundle unpack``) and run ``detect.py``;
4. arm64 (``scripts/arm64/run.sh``): a venv with ``pip install "edgedet[onnx]"``, ``[tflite]``,
   ``[openvino]`` from this repository's sources (runtime versions pinned to x86's, so that the
   same kernels' code is compared), a check that torch is not importable, the same unpack and
   ``detect.py`` (plus the budgeted ``Detector(budget_ms=...)``), and the Raspberry Pi camera loop
   (``examples/raspberrypi/camera_loop.py``) on the video;
5. compare (``compare.py``) and report.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the repository's packages first

from scripts.arm64.compare import Agreement, as_dicts, compare_reports, table  # noqa: E402

log = logging.getLogger("edgedet.arm64")

#: The runtime's packages pinned on arm64 to the versions of this (x86) interpreter.
RUNTIME_PACKAGES = ("numpy", "opencv-python-headless", "onnxruntime", "openvino", "ai-edge-litert")
#: Extras installed one after the other, as a user following the README would.
EXTRAS = ("onnx", "tflite", "openvino")
VENV = "/opt/edgedet-venv"  # inside the arm64 root file system
INSIDE = "/work"  # where the work directory is mounted inside
#: Runtimes that cannot run under qemu-user, and why. Their artifacts are still run on arm64 (in
#: their own process): an error there is reported as this known limit, not as a disagreement, and
#: if one runs it is compared like any other.
EMULATION_LIMITS = {
    "openvino": "OpenVINO's aarch64 CPU plugin crashes qemu-user (SIGSEGV while compiling a model; also "
                "with a synthetic /sys, QEMU_CPU=cortex-a72, one thread and no CPU pinning): not verifiable "
                "under emulation",
}
#: Large enough that every artifact fits: under emulation timings mean nothing, the path is checked.
BUDGET_MS = 1e7


def cache_root() -> Path:
    """``$EDGEDET_ARM64_CACHE``, else ``~/.cache/edgedet/arm64`` (rootfs.sh uses the same)."""
    env = os.environ.get("EDGEDET_ARM64_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgedet" / "arm64"


@dataclass
class Options:
    variants: tuple[str, ...] = ("lite0", "d0")
    formats: tuple[str, ...] = ("onnx", "openvino", "tflite")
    precisions: tuple[str, ...] = ("fp32", "int8")
    frames: int = 2  # ~50 detections >= 0.3 each (random weights); d0 FP32 takes ~20 s a frame emulated
    frame_size: tuple[int, int] = (320, 240)  # small: every pixel is emulated
    # One backend's INT8 walk (lite0 -> d0): emulated float is slow (d0 FP32 ~45 s a frame).
    budget_backend: str = "onnxruntime"
    budget_precision: str = "int8"


@dataclass
class Report:
    """What :func:`run_check` found; ``ok`` when every artifact agrees and every path ran."""

    agreements: list[Agreement]
    x86: dict[str, Any]
    arm64: dict[str, Any]
    camera_loop: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def known_limits(self) -> dict[str, str]:
        """Artifacts that failed on arm64 for a known emulation limit (:data:`EMULATION_LIMITS`)."""
        return {a.artifact: EMULATION_LIMITS[a.backend] for a in self.agreements
                if a.error and a.backend in EMULATION_LIMITS}

    def failures(self) -> dict[str, list[str]]:
        """Disagreements and errors, known emulation limits aside."""
        known = self.known_limits()
        return {a.artifact: a.failures() for a in self.agreements if a.failures() and a.artifact not in known}

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failures()

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "failures": self.failures(),
                "known_limits": self.known_limits(), "seconds": self.seconds,
                "agreements": as_dicts(self.agreements), "camera_loop": self.camera_loop,
                "x86": {k: v for k, v in self.x86.items() if k != "artifacts"},
                "arm64": {k: v for k, v in self.arm64.items() if k != "artifacts"},
                "errors": {side: {n: e["error"] for n, e in r["artifacts"].items() if "error" in e}
                           for side, r in (("x86", self.x86), ("arm64", self.arm64))}}


# ------------------------------------------------------------------------------------ x86 side

def build_exports(out: Path, options: Options) -> Path:
    """Export the artifacts (reused while up to date: the converter skips them)."""
    from converters import convert
    from edgedet.hub import cache_dir

    for variant in options.variants:
        trained = cache_dir() / "reference" / variant / "best.pth"
        # The test suite's realistic random weights (tests/conftest.py EXPORT_OPTIONS) otherwise.
        weights = dict(weights=str(trained)) if trained.is_file() else dict(weights="random", allow_random=True)
        report = convert([variant], formats=list(options.formats), precisions=list(options.precisions),
                         out_dir=out, calibration="synthetic", calibration_count=8, int8_mode="full", **weights)
        log.info("exports of %s:\n%s", variant, report.table())
        if not report.ok:
            raise RuntimeError(f"export failed:\n{report.table()}")
    return out


#: Converter format -> the runtime its artifacts name in their manifests.
FORMAT_BACKEND = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "tflite"}
FORMATS_ALL = tuple(FORMAT_BACKEND)


def gather(roots: list[Path], destination: Path, options: Options) -> Path:
    """Copy the artifacts of ``roots`` that the check covers (its variants and precisions) into
    one directory to pack: the exports cache may hold more, and a caller may bring artifacts it
    already built (the test suite's ONNX ones)."""
    from edgedet.detector import find_artifacts

    shutil.rmtree(destination, ignore_errors=True)
    for root in roots:
        for artifact in find_artifacts(root):
            m = artifact.manifest
            target = destination / m.variant / artifact.directory.name
            if m.variant in options.variants and m.precision in options.precisions and not target.exists():
                shutil.copytree(artifact.directory, target)  # the first root that has it wins
    return destination


def write_frames(directory: Path, options: Options) -> list[Path]:
    """Synthetic scenes with objects, as PNG (lossless: both platforms read the same pixels)."""
    import cv2

    from edgedet.data.synthetic import SyntheticConfig, render

    directory.mkdir(parents=True, exist_ok=True)
    config = SyntheticConfig(image_size=options.frame_size, min_objects=3, max_objects=8, seed=14)
    paths = []
    for index in range(options.frames):
        path = directory / f"frame{index:03d}.png"
        cv2.imwrite(str(path), render(index, config)[0])
        paths.append(path)
    return paths


def write_video(path: Path, frames: list[Path], repeat: int = 2) -> Path:
    """A short MJPG/AVI clip of the frames, for the camera loop (a video file is one of its sources)."""
    import cv2

    first = cv2.imread(str(frames[0]))
    height, width = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for _ in range(repeat):
        for frame in frames:
            writer.write(cv2.imread(str(frame)))
    writer.release()
    return path


def runtime_constraints() -> str:
    """pip constraints pinning the arm64 runtime packages to this interpreter's versions."""
    lines = []
    for name in RUNTIME_PACKAGES:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def copy_sources(destination: Path) -> Path:
    """The repository's files that a source install needs (not .git, venvs or build outputs)."""
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
                                    "*.onnx", "*.tflite", "*.pth", "*.pt", "results", "artifacts", "models", "runs")
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(REPO, destination, ignore=ignore)
    return destination


def run_x86(work: Path, bundle: Path) -> dict[str, Any]:
    models = work / "x86-models"
    shutil.rmtree(models, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "edgedet.bundle", "unpack", str(bundle), str(models)], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    out = work / "x86.json"
    subprocess.run([sys.executable, str(HERE / "detect.py"), "--models", str(models), "--frames",
                    str(work / "frames"), "--out", str(out)], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------- arm64 side

def arm64(work: Path, script: str, *, check: bool = True, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run a shell script inside the arm64 root file system, ``work`` mounted at /work."""
    log.info("arm64$ %s", script.strip().replace("\n", "; "))
    # stderr (logs, pip's warnings) streams as it comes: an emulated step can take minutes.
    result = subprocess.run([str(HERE / "run.sh"), "-b", f"{work}:{INSIDE}", "--", "/bin/sh", "-ec", script],
                            text=True, stdout=subprocess.PIPE, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"arm64 command failed ({result.returncode}): {script}\n{result.stdout[-2000:]}")
    return result


def build_wheel(sources: Path, destination: Path) -> Path:
    """edgedet's wheel, built from a copy of this repository's sources (pure Python: the same on
    arm64). Built here because pip building it under emulation takes a minute per install."""
    shutil.rmtree(destination, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(destination),
                    str(sources)], check=True)
    wheels = sorted(destination.glob("edgedet-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one edgedet wheel in {destination}, found {wheels}")
    return wheels[0]


def install_arm64(work: Path) -> dict[str, Any]:
    """The arm64 venv: created once per pin set (cached in the root file system), then edgedet
    installed from the wheel of this repository's sources, one extra after the other, as a user
    would from an index."""
    wheel = build_wheel(work / "src", work / "dist")
    constraints = runtime_constraints()
    (work / "constraints.txt").write_text(constraints)
    key = hashlib.sha256(constraints.encode()).hexdigest()[:12]
    arm64(work, f"""
        if [ "$(cat {VENV}/.edgedet-key 2>/dev/null)" != "{key}" ]; then
            rm -rf {VENV}
            python3 -m venv {VENV}
            {VENV}/bin/pip install -q -U pip
            echo {key} > {VENV}/.edgedet-key
        fi
        {VENV}/bin/pip uninstall -q -y edgedet 2>/dev/null || true
    """)
    for extra in EXTRAS:
        arm64(work, f'{VENV}/bin/pip install -q -c {INSIDE}/constraints.txt "{INSIDE}/dist/{wheel.name}[{extra}]"')
    probe = arm64(work, f"""
        {VENV}/bin/python -c 'import torch' 2>/dev/null && echo torch-importable || echo torch-absent
        {VENV}/bin/pip list --format=freeze 2>/dev/null | grep -i -E '^(edgedet|numpy|opencv|onnxruntime|openvino|ai-edge-litert|torch)' || true
    """)
    lines = probe.stdout.split()
    return {"torch_absent": "torch-absent" in lines, "packages": [l for l in lines if "==" in l]}


def run_arm64(work: Path, options: Options) -> dict[str, Any]:
    """Unpack the bundle with the CLI and run detect.py on arm64, one process per runtime (a runtime
    that crashes under emulation takes only its own artifacts down), then the budgeted selection."""
    py = f"{VENV}/bin/python"
    arm64(work, f"""
        rm -rf {INSIDE}/arm64-models
        {py} -m edgedet.bundle unpack {INSIDE}/models.edgedet {INSIDE}/arm64-models
    """)
    report: dict[str, Any] = {"artifacts": {}}
    for backend in [FORMAT_BACKEND[f] for f in FORMATS_ALL]:
        budget = (f"--budget-ms {BUDGET_MS:g} --budget-backend {backend} --budget-precision {options.budget_precision}"
                  if backend == options.budget_backend else "")
        result = arm64(work, f"""
            rm -f {INSIDE}/arm64-{backend}.json
            {py} {INSIDE}/src/scripts/arm64/detect.py --models {INSIDE}/arm64-models --frames {INSIDE}/frames \
                --backend {backend} --out {INSIDE}/arm64-{backend}.json {budget}
        """, check=False)
        out = work / f"arm64-{backend}.json"
        if result.returncode != 0 or not out.exists():
            log.error("arm64: the %s process died (exit %d)", backend, result.returncode)
            report.setdefault("crashed", {})[backend] = result.returncode
            continue
        part = json.loads(out.read_text())
        report["artifacts"].update(part.pop("artifacts"))
        report.update({k: v for k, v in part.items() if k not in report})
    for name, entry in _x86_names(work).items():  # what a crashed process never got to record
        if name not in report["artifacts"] and entry in report.get("crashed", {}):
            code = report["crashed"][entry]
            report["artifacts"][name] = {"backend": entry, "error": f"the {entry} process died "
                                         f"({_signal_name(code)}) under emulation"}
    return report


def _x86_names(work: Path) -> dict[str, str]:
    """Artifact name -> backend, as the x86 run saw them."""
    return {n: e["backend"] for n, e in json.loads((work / "x86.json").read_text())["artifacts"].items()}


def _signal_name(code: int) -> str:
    import signal

    if code > 128:  # the shell's 128 + signal number
        try:
            return f"exit {code}: {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exit {code}"


def run_camera_loop(work: Path, options: Options, frames: int) -> dict[str, Any]:
    """examples/raspberrypi/camera_loop.py on the video, from the bundle (Detector unpacks it)."""
    width, height = options.frame_size
    result = arm64(work, f"""
        rm -f {INSIDE}/camera.jsonl
        # The bundle is unpacked into the edgedet cache: the work directory's, not the root file system's.
        EDGEDET_CACHE={INSIDE}/edgedet-cache {VENV}/bin/python {INSIDE}/src/examples/raspberrypi/camera_loop.py --source {INSIDE}/clip.avi \
            --models {INSIDE}/models.edgedet --variant lite0 --backend tflite --frame-size {width}x{height} \
            --max-frames {frames} --no-display --jsonl-out {INSIDE}/camera.jsonl
    """, check=False)
    jsonl = work / "camera.jsonl"
    lines = jsonl.read_text().splitlines() if jsonl.exists() else []
    return {"returncode": result.returncode, "frames": len(lines), "summary": result.stdout.strip()[-500:],
            "error": None if result.returncode == 0 else result.stderr.strip()[-2000:]}


# ------------------------------------------------------------------------------------- the check

def run_check(options: Options | None = None, *, work: Path | None = None, prebuilt: Path | None = None) -> Report:
    """Run every step; returns the :class:`Report` (raises only when a step cannot run at all).

    ``prebuilt``: an export directory whose artifacts join the bundle as they are (with
    ``options.formats`` naming only the formats still to export).
    """
    from edgedet.bundle import pack

    options = options or Options()
    cache = cache_root()
    work = work or cache / "work"
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] = round(time.perf_counter() - started, 1)
            log.info("%s: %.1f s", name, seconds[name])

    timed("rootfs", subprocess.run, [str(HERE / "rootfs.sh")], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    exports = timed("export", build_exports, cache / "exports", options)
    roots = [exports] if prebuilt is None else [Path(prebuilt), exports]  # prebuilt ones first
    timed("pack", lambda: pack(gather(roots, work / "exports", options), work / "models.edgedet"))
    frames = write_frames(work / "frames", options)
    write_video(work / "clip.avi", frames)
    copy_sources(work / "src")

    x86 = timed("x86 detect", run_x86, work, work / "models.edgedet")
    install = timed("arm64 install", install_arm64, work)
    arm = timed("arm64 detect", run_arm64, work, options)
    arm["install"] = install
    camera = timed("arm64 camera loop", run_camera_loop, work, options, len(frames))

    agreements = compare_reports(x86, arm)
    problems = []
    if arm["platform"]["machine"] != "aarch64":
        problems.append(f"the arm64 side ran on {arm['platform']['machine']}, not aarch64")
    if not install["torch_absent"] or arm["platform"]["torch_importable"]:
        problems.append("torch is importable in the arm64 runtime venv")
    if "error" in arm.get("budget", {"error": "not run"}):
        problems.append(f"budgeted selection on arm64: {arm.get('budget', {}).get('error', 'not run')}")
    if camera["returncode"] != 0 or camera["frames"] != len(frames):
        problems.append(f"camera loop on arm64: exit {camera['returncode']}, {camera['frames']} of "
                        f"{len(frames)} frames: {camera['error']}")
    return Report(agreements, x86, arm, camera, seconds, problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the full report (JSON) here")
    parser.add_argument("--frames", type=int, default=Options.frames, help="frames per artifact (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    report = run_check(Options(frames=args.frames))
    report.seconds["total"] = round(time.perf_counter() - started, 1)
    print(table(report.agreements))
    print(json.dumps({"seconds": report.seconds, "budget": report.arm64.get("budget"),
                      "camera_loop": report.camera_loop, "problems": report.problems,
                      "failures": report.failures(), "known_limits": report.known_limits()}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report.to_dict(), indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
