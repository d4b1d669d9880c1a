"""The ``batml`` command: one entry point, one module per subcommand.

The CLI only parses options, calls the Python API and prints; everything it does can be
done from Python too. Exit status: 0 success; 1 error (nothing or not everything done, the
message says why); 2 bad command line; 3 done, but some files or recordings were rejected or
failed (listed in the output); 130 interrupted (run the same command again to resume).

Each subcommand's module (``pipeline.cli.<command>``) has ``register(sub, common)``, which adds
its parser, and ``run(args)``, which does the work and returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

from pipeline._version import __version__
from pipeline.cli.options import EXIT_ERROR, EXIT_INTERRUPTED, HelpFormatter
from pipeline.interrupt import interruptible

#: The subcommands, in the order ``batml --help`` lists them.
COMMANDS = ("simulate", "manifest", "convert", "ingest", "train", "tune", "detect", "evaluate", "plot", "export")


def build_parser(commands: tuple[str, ...] = COMMANDS) -> argparse.ArgumentParser:
    """The ``batml`` parser with the subcommands ``commands`` (default: all of them).

    :func:`main` registers only the command it runs, when the command line names one: some
    commands' options import heavy modules (the simulator's settings import scipy.signal), and
    ``batml detect`` on a few files should not pay for them.
    """
    parser = argparse.ArgumentParser(
        prog="batml",
        description="Detect bat echolocation calls and classify their species in ultrasonic recordings, "
        "from a laptop to a SLURM cluster.",
        epilog="Exit status: 0 ok; 1 error; 2 bad command line; 3 done but some files failed (listed); "
        "130 interrupted (run the same command again to resume).",
    )
    parser.add_argument("--version", action="version", version=f"batml {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file (see README)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or dashboard address")
    common.add_argument(
        "--debug", action="store_true",
        help="keep every traceback (Dask tasks' included) and the libraries' own messages, in a log file "
        "next to the output (OUTPUT.batml-debug.log); also BATML_DEBUG=1",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_parser = sub.add_parser

    def add_parser(**kwargs):  # every subcommand keeps the line breaks of its examples
        return _add_parser(formatter_class=HelpFormatter, **kwargs)

    sub.add_parser = add_parser
    for name in commands:
        importlib.import_module(f"pipeline.cli.{name}").register(sub, common)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: one line, no traceback."""
    from pipeline.annotations import AnnotationError
    from pipeline.config import SettingsError
    from pipeline.detection.settings import DetectError
    from pipeline.distributed import ClusterError
    from pipeline.io.archive import ArchiveError
    from pipeline.io.cube import CubeError
    from pipeline.model.bundle import BundleError
    from pipeline.model.device import ExportError
    from pipeline.model.params import ParamsError
    from pipeline.model.reference import ReferenceModelError
    from pipeline.model.runtime import RuntimeModelError
    from pipeline.outputs.folder import DetectionsError
    from pipeline.simulation.settings import SimulationError
    from pipeline.training import TrainingError

    return (
        SettingsError, DetectError, ClusterError, ArchiveError, CubeError, AnnotationError, BundleError, ParamsError,
        TrainingError, DetectionsError, SimulationError, ReferenceModelError, ExportError, RuntimeModelError, FileNotFoundError, PermissionError, *_plot_errors(),
    )  # fmt: skip


def _plot_errors() -> tuple[type[BaseException], ...]:
    plot = sys.modules.get("pipeline.plot")  # a PlotError comes from a loaded pipeline.plot only
    return (plot.PlotError,) if plot is not None else ()


def _output_of(args) -> str | None:
    """The command's output (for messages and the debug log's place)."""
    return next((str(getattr(args, k)) for k in ("out", "out_dir", "cube") if getattr(args, k, None)), None)


def main(argv: list[str] | None = None) -> int:
    from pipeline import logs

    arguments = sys.argv[1:] if argv is None else list(argv)
    named = [a for a in arguments if a in COMMANDS][:1]
    before = arguments[: arguments.index(named[0])] if named else []
    parser = build_parser(tuple(named) if named and not {"-h", "--help"} & set(before) else COMMANDS)
    args = parser.parse_args(arguments)
    debug = args.debug or logs.debug_enabled()
    log_file = logs.configure(debug=debug, log_file=logs.debug_log_path(_output_of(args)) if debug else None)
    if log_file is not None:
        print(f"batml: debug log: {log_file}", file=sys.stderr)
    try:
        with interruptible():  # SIGTERM (kill, SLURM's time limit) stops cleanly like Ctrl-C
            return args.func(args)
    except KeyboardInterrupt:
        print("batml: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as exc:
        _debug_traceback(debug)
        print(f"batml: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # full disk, read-only folder...: the system's words, one line
        _debug_traceback(debug)
        # A failed write (ENOSPC) names no file: name the command's output instead.
        where = exc.filename or _output_of(args) or ""
        print(f"batml: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:  # a bug: Python prints its traceback; the debug log keeps it too
        logs.logger.exception("batml %s failed", args.command)
        raise


def _debug_traceback(debug: bool) -> None:
    """In debug mode, the traceback of the error being handled goes to the log and stderr."""
    if debug:
        from pipeline import logs

        logs.logger.error("the error's traceback", exc_info=True)
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
