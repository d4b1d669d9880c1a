"""Clusters: defaults merged into dask.config, connecting to a scheduler address, errors."""

from __future__ import annotations

import dask.config
import pytest

from pipeline.distributed import ClusterError, connect, worker_threads


def test_defaults_are_in_dask_config_and_overridable():
    assert dask.config.get("batml.local.threads_per_worker") == 1
    with dask.config.set({"batml.local.n_workers": 1}):
        with connect("local", quiet=True) as client:
            assert len(client.nthreads()) == 1


def _busy(seconds: float) -> int:
    import time

    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        n += 1
    return n


def test_workers_keep_no_profile_samples():
    """The statistical profiler's samples grew a worker's memory over a long run: it is off."""
    with dask.config.set({"batml.local.n_workers": 1}):
        with connect("local", quiet=True) as client:
            assert client.submit(_busy, 1.5, pure=False).result() > 0
            assert client.run(lambda dask_worker: len(dask_worker.profile_history)) == {
                address: 0 for address in client.nthreads()
            }
            assert client.run(lambda dask_worker: dict(dask_worker.profile_keys)) == {
                address: {} for address in client.nthreads()
            }


def test_cluster_logs_keep_a_bounded_number_of_task_messages():
    """distributed's developer logs kept the last 1000 messages of each stream, and every
    task message carries a chunk's recordings: they are kept to 100, on both sides."""
    padding = "x" * 2_000
    with dask.config.set({"batml.local.n_workers": 1}):
        with connect("local", quiet=True) as client:
            futures = [client.submit(len, padding, pure=False) for _ in range(300)]
            assert sum(f.result() for f in futures) == 300 * len(padding)
            del futures

            def scheduler_logs(dask_scheduler):
                streams = [len(stream.recent_message_log) for stream in dask_scheduler.stream_comms.values()]
                return streams, len(dask_scheduler.transition_log)

            streams, transitions = client.run_on_scheduler(scheduler_logs)
            (stimuli,) = client.run(lambda dask_worker: len(dask_worker.state.stimulus_log)).values()
    assert streams and max(streams) <= 100 and transitions <= 100 and stimuli <= 100, (streams, transitions, stimuli)


def test_connects_to_a_running_scheduler(client, capsys):
    with connect(client.scheduler.address) as other:
        assert worker_threads(other) == worker_threads(client) == 2
    assert "Dask dashboard:" in capsys.readouterr().err
    # the cluster it connected to is not closed by leaving the block
    assert client.submit(sum, [1, 2]).result() == 3


def test_unreachable_scheduler_is_one_line():
    with dask.config.set({"batml.connect_timeout": "1s"}):
        with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
            with connect("tcp://127.0.0.1:9", quiet=True):
                pass
