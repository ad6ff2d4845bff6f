"""Pull what a reader would run out of a Markdown file: its fenced ``python`` blocks, and the commands of
its ``bash`` blocks (for ``--help``). Used by ``tests/test_readme.py``; kept apart so it can be tested."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`((?:python3?|edgedet-)[^`\n]*)`")
#: Programs a README uses to set up, not to run edgedet: no --help check for them.
NOT_OURS = {"pip", "sudo", "scp", "journalctl", "grep", "cp", "git", "apt", "apt-get", "."}


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # 1-based line of the opening fence, for error messages

    def where(self, path: Path) -> str:
        return f"{path.name}:{self.line}"


@dataclass(frozen=True)
class Command:
    """One command line shown in a README: what to run for ``--help``, and the options it uses."""

    argv: tuple[str, ...]  # the program: ('edgedet-convert',), ('python', '-m', 'edgedet.bundle'), ...
    words: tuple[str, ...]  # what followed it
    source: str  # file:line

    @property
    def options(self) -> list[str]:
        """The ``--long`` options it passes (``--out=x`` -> ``--out``)."""
        return [w.split("=", 1)[0] for w in self.words if w.startswith("--")]

    @property
    def subcommand(self) -> str | None:
        """The first bare word after the program (a subcommand, if the program has any)."""
        return next((w for w in self.words if not w.startswith("-")), None)


def blocks(markdown: str) -> list[Block]:
    """Every fenced block, with its language tag ('' if none)."""
    return [Block(m.group(1), m.group(2), markdown.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(markdown)]


def python_blocks(markdown: str) -> list[Block]:
    return [b for b in blocks(markdown) if b.language == "python"]


def commands(markdown: str, path: Path) -> list[Command]:
    """The edgedet commands a reader is shown: in ``bash`` blocks (one per pipeline stage, comments
    dropped, continuations joined) and in inline code spans. Console scripts (``edgedet-*``) and
    ``python`` runs of a module or script count; ``python -m venv``, ``pip`` and the like do not."""
    found = []
    for block in blocks(markdown):
        if block.language not in ("bash", "sh", "shell"):
            continue
        for line in block.code.replace("\\\n", " ").splitlines():
            for stage in re.split(r"&&|\|\||;|\|", _strip_comment(line)):
                try:
                    words = shlex.split(stage)
                except ValueError:  # an unbalanced quote inside a long example: not ours to parse
                    continue
                command = _command(words, f"{block.where(path)}")
                if command is not None:
                    found.append(command)
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)  # keep line numbers
    for m in INLINE.finditer(prose):  # commands quoted in the text: `python scripts/train_reference.py`
        command = _command(shlex.split(m.group(1)), f"{path.name}:{prose.count(chr(10), 0, m.start()) + 1}")
        if command is not None:
            found.append(command)
    return found


def _strip_comment(line: str) -> str:
    """The line without its ``# comment`` (a '#' outside quotes, after a space or at the start)."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"":
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _command(words: list[str], source: str) -> Command | None:
    while words and re.fullmatch(r"\w+=.*", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words or words[0] in NOT_OURS:
        return None
    program = words[0]
    if program in ("python", "python3"):
        if len(words) >= 3 and words[1] == "-m" and words[2] not in ("venv", "pip"):
            return Command(("python", "-m", words[2]), tuple(words[3:]), source)
        if len(words) >= 2 and words[1].endswith(".py"):
            return Command(("python", words[1]), tuple(words[2:]), source)
        return None
    if program == "torchrun" and "-m" in words[:-1]:  # torchrun [its options] -m MODULE [the module's]
        at = words.index("-m")
        return Command(("python", "-m", words[at + 1]), tuple(words[at + 2:]), source)
    if program.startswith("edgedet-") and "." not in program:  # not a file such as edgedet-camera.service
        return Command((program,), tuple(words[1:]), source)
    return None
