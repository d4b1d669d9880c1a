"""Ctrl-C and SIGTERM stop a command even where a library swallows the KeyboardInterrupt."""

from __future__ import annotations

import signal
import sys

import pytest

from pipeline.distributed import run_chunks
from pipeline.interrupt import interruptible, raise_if_interrupted
from pipeline.testing import swallow_signal


@pytest.fixture(autouse=True)
def ctrl_c():
    """Ctrl-C raising KeyboardInterrupt, as in a terminal, whatever pytest inherited: a script
    that starts it in the background starts it with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_swallowed_interruption_is_raised_again_until_the_command_ends(signum):
    sigterm = signal.getsignal(signal.SIGTERM)
    with interruptible():
        assert swallow_signal(signum)
        for _ in range(2):  # every commit point after it, not only the first
            with pytest.raises(KeyboardInterrupt):
                raise_if_interrupted()
    raise_if_interrupted()  # the next command starts afresh
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is sigterm


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interruption_lost_in_a_finaliser_is_raised_again_without_a_traceback(signum, capfd, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's, not pytest's
    with interruptible():
        assert swallow_signal(signum, where="finaliser")
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    assert "Traceback" not in capfd.readouterr().err


def test_other_errors_in_finalisers_are_still_reported(capfd, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)

    class Broken:
        def __del__(self):
            raise ValueError("a bug in a finaliser")

    with interruptible():
        Broken()
    assert "ValueError: a bug in a finaliser" in capfd.readouterr().err


def test_ctrl_c_stays_ignored_when_the_parent_ignores_it():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # put back by the ctrl_c fixture
    with interruptible():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)  # batml's


def test_chunks_stop_at_the_next_task_after_a_swallowed_interruption(client):
    submitted = []

    def submit(chunk):
        submitted.append(chunk)
        return client.submit(abs, -chunk, pure=False)

    with interruptible():
        assert swallow_signal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            run_chunks(client, list(range(100)), submit, desc="test", progress=False)
    assert len(submitted) < 100
    assert run_chunks(client, list(range(20)), submit, desc="test", progress=False) == []
