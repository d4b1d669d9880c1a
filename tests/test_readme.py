"""The README's commands are real: the set-up commands are the ones CI runs, and every `batml`
command line in its code blocks is accepted by the parser (so an option renamed in the code
cannot linger in the documentation)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_blocks(text: str) -> list[str]:
    """The fenced code blocks, indented ones (in list items) included, without their fences."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.strip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line.strip())
    return blocks


def _command_lines() -> list[str]:
    lines = []
    for block in _code_blocks(README):
        for line in block.splitlines():
            for command in line.split("&&"):  # the set-up commands chain several
                command = command.strip()
                if command.startswith((".venv/bin/batml ", "batml ")):
                    lines.append(command)
    return lines


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert any(ci == block.strip() for block in _code_blocks(README))


def test_the_readme_shows_every_command():
    shown = {shlex.split(line, comments=True)[1] for line in _command_lines()}
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands - shown == set(), "commands without an example in the README"


@pytest.mark.parametrize("line", _command_lines())
def test_readme_command_parses(line):
    argv = shlex.split(line, comments=True)[1:]
    argv = argv[: argv.index(">")] if ">" in argv else argv
    build_parser().parse_args(argv)  # SystemExit(2) if an option or argument is wrong


def test_every_test_the_readme_cites_exists():
    cited = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", README))
    assert len(cited) >= 10
    for path, name in sorted(cited):
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^(async )?def {name}\(", source, flags=re.MULTILINE), f"{path}::{name}"
