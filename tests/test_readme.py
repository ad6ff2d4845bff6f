"""The READMEs cannot drift: every fenced ``python`` block runs, and every command they show answers
``--help`` and knows the options the README passes it.

Blocks of one README run in order in one namespace (as a reader pastes them), in a scratch directory
holding ``exports/`` (real ONNX artifacts of lite0 and d0 built for this test session) and
``models.edgedet`` (the same packed as a bundle), with ``$EDGEDET_MODELS`` pointing at the exports.
What a README leaves to the reader is provided here, and only here:
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import readme_snippets

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "examples" / "raspberrypi" / "README.md"]
OUTSIDE = re.compile(r"\.\./shared/")  # the developers' notes beside the checkout, which users do not have


def placeholders(workdir: Path) -> dict[str, object]:
    """Names a README uses without defining: a camera frame, and a batch for the PyTorch model."""
    import torch

    from edgedet.data import SyntheticConfig, render

    frame, _ = render(0, SyntheticConfig(image_size=(1280, 720), seed=3))
    return {"frame": frame, "images": torch.rand(1, 3, 512, 512)}


def substitutions(workdir: Path) -> dict[str, str]:
    """What a README names that differs on this machine, and its stand-in (regular expression -> text):

    * the Pi camera becomes a short video of synthetic scenes (the same loop code reads both);
    * a latency budget is for the reader's device: here every artifact must fit, so that what the
      block runs does not depend on how busy the test machine is (timings belong in benchmarks).
    """
    return {r'open_source\("picamera"\)': f'open_source({str(workdir / "camera.mp4")!r})',
            r"budget_ms=\d+(\.\d+)?": "budget_ms=600_000"}


def _write_video(path: Path, frames: int = 6, size: tuple[int, int] = (1280, 720)) -> None:
    from edgedet.data import SyntheticConfig, render

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for i in range(frames):
        writer.write(render(i, SyntheticConfig(image_size=size, seed=5))[0])
    writer.release()


@pytest.fixture(scope="module")
def workdir(onnx_exports, tmp_path_factory) -> Path:
    from edgedet.bundle import pack

    out, _ = onnx_exports
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(out, work / "exports", ignore=shutil.ignore_patterns(".*", "*.failed"))
    pack(work / "exports", work / "models.edgedet")
    _write_video(work / "camera.mp4")
    return work


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(readme: Path, workdir: Path, monkeypatch, tmp_path):
    blocks = readme_snippets.python_blocks(readme.read_text(encoding="utf-8"))
    assert blocks, f"{readme} has no python block: the extractor or the README changed"
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("EDGEDET_MODELS", str(workdir / "exports"))
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "cache"))  # profiles measured here, not the user's
    namespace: dict[str, object] = {"__name__": "__readme__", **placeholders(workdir)}
    for block in blocks:
        code = block.code
        for pattern, stand_in in substitutions(workdir).items():
            code = re.sub(pattern, stand_in, code)
        try:
            exec(compile(code, block.where(readme), "exec"), namespace)  # noqa: S102 - our own README
        except Exception as exc:
            pytest.fail(f"the python block at {block.where(readme)} fails: {type(exc).__name__}: {exc}\n{block.code}")


def _help(argv: list[str], cwd: Path) -> str:
    # A console script is installed beside this interpreter, whether or not its venv is on PATH.
    script = Path(sys.executable).parent / argv[0]
    program = [sys.executable, *argv[1:]] if argv[0] == "python" else [str(script), *argv[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(program, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}"
    assert "usage" in result.stdout.lower(), f"{' '.join(argv)} printed no usage:\n{result.stdout[:500]}"
    return result.stdout


def _shown_commands() -> list[tuple[readme_snippets.Command, Path]]:
    found = []
    for readme in READMES:
        for command in readme_snippets.commands(readme.read_text(encoding="utf-8"), readme):
            found.append((command, readme.parent))
    return found


def _grouped() -> dict[tuple[str, ...], list[tuple[readme_snippets.Command, Path]]]:
    groups: dict[tuple[str, ...], list] = {}
    for command, folder in _shown_commands():
        groups.setdefault(command.argv, []).append((command, folder))
    return groups


@pytest.mark.parametrize("argv", sorted(_grouped()), ids=" ".join)
def test_commands_answer_help_and_know_their_options(argv: tuple[str, ...]):
    uses = _grouped()[argv]
    script_folder = uses[0][1]
    # A script is shown relative to the repository or to the README beside it (examples/raspberrypi).
    cwd = script_folder if argv[0] == "python" and argv[-1].endswith(".py") and not (ROOT / argv[-1]).exists() \
        else ROOT
    top = _help([*argv, "--help"], cwd)
    for command, _ in uses:
        text = top
        sub = command.subcommand
        if sub and "{" in top and sub in top.split("{", 1)[1].split("}", 1)[0].split(","):
            text = _help([*argv, sub, "--help"], cwd)
        missing = [o for o in command.options if o != "--help" and o not in text]
        assert not missing, f"{command.source}: {' '.join(argv)} does not know {missing}"


def test_a_broken_block_or_option_is_caught(tmp_path):
    """The extractor finds what a broken README would hide: a failing block and an unknown option."""
    markdown = ("Intro\n\n```python\nimport edgedet\nedgedet.Detectorr\n```\n\n"
                "```bash\nedgedet-convert --variants lite0 --no-such-option \\\n    --out x  # comment --not-this\n```\n")
    (block,) = readme_snippets.python_blocks(markdown)
    with pytest.raises(AttributeError):
        exec(compile(block.code, "broken", "exec"), {})  # noqa: S102
    (command,) = readme_snippets.commands(markdown, tmp_path / "README.md")
    assert command.options == ["--variants", "--no-such-option", "--out"]
    help_text = _help(["edgedet-convert", "--help"], ROOT)
    assert "--no-such-option" not in help_text and "--variants" in help_text


def test_no_tracked_file_points_outside_the_repository():
    """Users have the repository only: no tracked file may send them to a folder beside the checkout."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.fail(f"git ls-files failed: {tracked.stderr}")
    offenders = [name for name in tracked.stdout.splitlines()
                 if name.endswith((".md", ".py", ".toml", ".service", ".txt", ".sh"))
                 and OUTSIDE.search((ROOT / name).read_text(encoding="utf-8", errors="replace"))]
    assert offenders == []
