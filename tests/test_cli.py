"""The ``batml`` command line: help, exit statuses, one-line errors."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pandas as pd
import pytest

from pipeline.cli import build_parser, main
from pipeline.testing import write_bad_corpus

COMMANDS = ["simulate", "manifest", "ingest", "train", "tune", "evaluate"]


def test_every_command_has_complete_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    top = capsys.readouterr().out
    for command in COMMANDS:
        assert command in top
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert f"usage: batml {command}" in text and "--config" in text
    # every option of every command documents itself
    for command, sub in build_parser()._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, (command, action.dest)


def test_every_command_gives_examples_that_parse():
    """Each subcommand's help ends with examples, one per line, that its own parser accepts."""
    parser = build_parser()
    for command, sub in parser._subparsers._group_actions[0].choices.items():
        assert sub.epilog and sub.epilog.startswith("Examples:"), command
        lines = [line.strip() for line in sub.epilog.splitlines()[1:]]
        assert lines and all(line.startswith("batml ") for line in lines), command
        assert any(line.split()[1] == command for line in lines), command
        for line in lines:
            argv = shlex.split(line, comments=True)[1:]
            argv = argv[: argv.index(">")] if ">" in argv else argv
            parser.parse_args(argv)  # exits (code 2) on an example that does not parse
        assert "\n  batml " in sub.format_help(), command  # kept one per line, indented


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("batml ")


def test_bad_command_line_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ingest"])
    assert exit_.value.code == 2


def test_manifest_lists_rejected_files_and_exits_3(tmp_path, capsys):
    corpus = write_bad_corpus(tmp_path / "odd")
    out_file = tmp_path / "manifest.parquet"
    assert main(["manifest", str(tmp_path / "odd"), "-o", str(out_file), "-q"]) == 3
    out = capsys.readouterr().out
    table = pd.read_parquet(out_file)
    rejected = table[table["status"] != "ok"]
    assert len(rejected) > 5
    for path, reason in zip(rejected["path"], rejected["reason"]):
        assert f"rejected: {path}: {reason}" in out
    assert set(table["path"].map(lambda p: p.rsplit("/", 1)[-1])) <= set(corpus)


def test_bad_settings_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "batml.toml"
    config.write_text("[spectrogram]\nwindow = 3\n")
    code = main(["manifest", str(tmp_path), "-o", str(tmp_path / "m.parquet"), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "unknown setting(s) window" in err


def test_simulate_then_ingest_through_the_cli(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "sim"), "--minutes", "0.2", "--seed", "3", "-q"]) == 0
    assert "annotations.npz" in capsys.readouterr().out
    assert (tmp_path / "sim" / "annotations.csv").is_file()
    code = main(["ingest", str(tmp_path / "sim"), "--cube", str(tmp_path / "sim.zarr"), "--workers", "1", "-q"])
    assert code == 0, capsys.readouterr()
