"""Logging: batml's own messages, the libraries' start-up chatter, and where tracebacks go.

batml's modules log to the ``pipeline`` logger tree (``logging.getLogger(__name__)``). A
command prints its results and one line per problem; what happens inside stays quiet unless
asked for:

- **normal runs**: warnings of batml on standard error, one line each; TensorFlow's start-up
  lines (absl, oneDNN, CPU features: printed by its C++ core when it is imported, beyond
  Python's reach and ``TF_CPP_MIN_LOG_LEVEL``'s) and XGBoost's and Dask's informational lines
  are silenced, in the command and in its local Dask workers;
- **debug runs** (``batml --debug``, or ``BATML_DEBUG=1`` in the environment, which the workers
  inherit): everything at DEBUG level goes to a log file next to the command's output
  (:func:`debug_log_path`), with the full traceback of every error, those raised inside Dask
  tasks included (:func:`log_task_failure`), and the libraries keep their own lines.

:func:`quiet_libraries` is idempotent and cheap: it imports nothing heavy, and silences
TensorFlow's import through an import hook that redirects the C-level standard error only
while ``tensorflow`` itself is being imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
from pathlib import Path

#: The root of batml's loggers (its modules' ``__name__``).
LOGGER = "pipeline"

#: Environment variable that turns debug mode on (inherited by local Dask workers).
DEBUG_VARIABLE = "BATML_DEBUG"

#: Loggers of libraries whose informational lines are not for users.
CHATTY_LOGGERS = ("distributed", "xgboost", "tensorflow", "absl", "h5py", "numexpr", "bokeh", "tornado")

logger = logging.getLogger(LOGGER)


def debug_enabled() -> bool:
    """Whether debug mode is on (``BATML_DEBUG`` set to anything but ``""``/``0``)."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def debug_log_path(output: str | os.PathLike | None) -> Path:
    """Where a debug run writes its log: beside ``output`` (``<output>.batml-debug.log``),
    or ``./batml-debug.log`` for a command without an output."""
    if output is None:
        return Path("batml-debug.log")
    output = Path(output)
    return output.with_name(output.name + ".batml-debug.log")


def configure(*, debug: bool = False, log_file: str | os.PathLike | None = None) -> Path | None:
    """Set up batml's logging for one command; the debug log file, if any.

    Parameters
    ----------
    debug : bool
        Debug mode: ``BATML_DEBUG=1`` is set for the workers started after this call, the
        ``pipeline`` loggers log at DEBUG level to ``log_file``, and the libraries keep their
        own lines.
    log_file : path, optional
        The debug log (default ``./batml-debug.log``).
    """
    root = logging.getLogger(LOGGER)
    for handler in list(root.handlers):
        if getattr(handler, "batml", False):
            root.removeHandler(handler)
            handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("batml: %(message)s"))
    console.addFilter(lambda record: not record.exc_info)  # tracebacks go to the debug log only
    console.batml = True
    root.addHandler(console)
    root.propagate = False
    if not debug:
        root.setLevel(logging.WARNING)
        quiet_libraries()
        return None
    os.environ[DEBUG_VARIABLE] = "1"
    path = Path(log_file) if log_file is not None else debug_log_path(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    file = logging.FileHandler(path, encoding="utf-8")
    file.setLevel(logging.DEBUG)
    file.setFormatter(logging.Formatter("%(asctime)s %(processName)s %(name)s %(levelname)s: %(message)s"))
    file.batml = True
    root.addHandler(file)
    root.setLevel(logging.DEBUG)
    logger.debug("batml %s, Python %s, argv %s", _version(), sys.version.split()[0], sys.argv)
    return path


def _version() -> str:
    from pipeline._version import __version__

    return __version__


def log_task_failure(what: str, future) -> None:
    """Log the full traceback of a failed Dask task (the command reports it in one line)."""
    try:
        exc, tb = future.exception(), future.traceback()
    except Exception:  # the future was lost with its worker: nothing more to say
        return
    logger.error("%s failed", what, exc_info=(type(exc), exc, tb))


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` (once) and loads it with the C-level standard error silenced."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """A module's own loader, run with the C-level standard error silenced."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with _stderr_silenced():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # anything else a package asks of its loader
        return getattr(self._loader, name)


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 to /dev/null for the duration (what C++ code writes there included)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real standard error (some notebooks): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's start-up lines (not in debug mode); imports nothing.

    TensorFlow's C++ log level is set (``TF_CPP_MIN_LOG_LEVEL``, unless already set), and its
    first import goes through an import hook that silences what its core prints while loading.
    ``import pipeline`` calls this, so Python and Jupyter users do not see those lines either.
    """
    if debug_enabled():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


def quiet_libraries() -> None:
    """Silence TensorFlow's, XGBoost's and Dask's start-up and informational lines.

    Does nothing in debug mode: :func:`quiet_tensorflow`, and the chatty Python loggers set to
    WARNING (what a command does; a library imported in a notebook leaves them alone).
    """
    if debug_enabled():
        return
    quiet_tensorflow()
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def dask_setup(worker=None) -> None:
    """Dask preload hook (``distributed.worker.preload``): quiet libraries in every worker."""
    quiet_libraries()
