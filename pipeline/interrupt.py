"""Ctrl-C and SIGTERM: a command stops, even where a library swallows the interruption.

``batml`` turns SIGTERM (``kill``, SLURM's time limit) into a :class:`KeyboardInterrupt`, as
Python does for Ctrl-C, so that both unwind the command cleanly. An exception raised by a
signal handler lands wherever the main thread happens to be, and some libraries catch
everything there: Keras, saving a model, falls back with a bare ``except:`` when its memory
check fails, and an interruption that arrives during that check is lost. Python itself cannot
raise an exception out of a finaliser or a garbage-collector callback (distributed keeps one):
it prints it with a traceback and goes on. So the handler also remembers the interruption,
:func:`raise_if_interrupted`, called where a command commits work (a chunk done, a model bundle
made visible), raises it again, and the traceback of one lost in a finaliser is not printed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

_requested = threading.Event()


def _interrupt(signum, frame):
    _requested.set()
    raise KeyboardInterrupt


def _unraisable_hook(previous):
    def hook(unraisable) -> None:
        if _requested.is_set() and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return  # ours, lost in a finaliser: raised again at the next commit point
        previous(unraisable)

    return hook


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within: SIGTERM, and Ctrl-C unless the parent process ignores it, raise a remembered
    :class:`KeyboardInterrupt` in the main thread, reported once, not also from a finaliser.
    Elsewhere than the main thread, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable_hook(sys.unraisablehook)
    _requested.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook
        _requested.clear()


def raise_if_interrupted() -> None:
    """Raise :class:`KeyboardInterrupt` if the command was interrupted: a no-op unless an
    interruption was received, and swallowed, within :func:`interruptible`."""
    if _requested.is_set():
        raise KeyboardInterrupt
