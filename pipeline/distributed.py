"""Dask clusters: where batml's work runs.

``cluster`` names where: ``"local"`` (default) starts a :class:`distributed.LocalCluster` on
this machine; ``"slurm"`` starts workers as SLURM jobs through dask-jobqueue; anything else
is the address of a running scheduler (``tcp://host:8786``). Defaults live in
``pipeline/distributed.yaml``, merged into ``dask.config`` under ``batml``, so every key can
be overridden by a YAML file in ``~/.config/dask/``, an environment variable
(``DASK_BATML__LOCAL__N_WORKERS=4``), a YAML file given to :func:`load_cluster_config`
(``--cluster-config`` on the command line) or a keyword. ``cluster/`` holds example profiles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import dask.config
import dask.utils
import yaml

from pipeline.interrupt import raise_if_interrupted
from pipeline.logs import log_task_failure

_DEFAULTS = Path(__file__).with_name("distributed.yaml")


def _load_defaults() -> None:
    import distributed  # noqa: F401  (its own defaults first, so that ours can override them)

    with _DEFAULTS.open() as fh:
        defaults = yaml.safe_load(fh)
    dask.config.update_defaults(defaults)


_load_defaults()


#: ``cluster`` value that runs the work in this process: one worker thread, no worker process.
IN_PROCESS = "in-process"


class ClusterError(RuntimeError):
    """A cluster that could not be started or reached; one line for the user."""


def worker_threads(client) -> int:
    """Total threads of the cluster's workers (at least 1)."""
    return max(1, sum(client.nthreads().values()))


def run_chunks(client, chunks, submit, *, desc: str, progress: bool = True) -> list[str]:
    """Run one task per chunk, a bounded number in flight; the errors, one line each.

    Parameters
    ----------
    client : distributed.Client
    chunks : sequence of int
        The chunks to run, in order.
    submit : callable
        ``submit(chunk) -> Future``: submits the task of one chunk.
    desc : str
        Label of the progress bar (one step per chunk).
    progress : bool
        Show the progress bar.

    Returns
    -------
    list of str
        ``"chunk K: Error: message"`` for each chunk whose task failed (a worker that died
        repeatedly, or a bug); the other chunks still run. At most ``tasks_per_thread`` tasks
        per worker thread are queued at once, so the scheduler's memory does not grow with
        the archive.
    """
    from tqdm.auto import tqdm

    if not len(chunks):
        return []
    errors: list[str] = []
    with tqdm(total=len(chunks), disable=not progress, desc=desc, unit="chunk", smoothing=0.1) as bar:
        for chunk, future in completed_in_turn(client, chunks, submit):
            try:
                future.result()
            except Exception as exc:  # a worker died repeatedly or a bug: report, go on
                log_task_failure(f"{desc} of chunk {chunk}", future)  # the traceback, for --debug
                errors.append(f"chunk {chunk}: {type(exc).__name__}: {exc}".splitlines()[0])
            bar.update()
    return errors


def completed_in_turn(client, items, submit):
    """``(item, future)`` for each of ``items`` as its task finishes, with at most
    ``tasks_per_thread`` tasks per worker thread submitted at once (``submit(item) -> Future``),
    so that neither the scheduler nor the workers hold more as the archive grows."""
    from distributed import as_completed

    in_flight = worker_threads(client) * int(dask.config.get("batml.tasks_per_thread", 4)) + 2
    queue = iter(items)
    running = as_completed()

    def submit_next() -> None:
        item = next(queue, None)
        if item is not None:
            future = submit(item)
            future.batml_item = item
            running.add(future)

    for _ in range(in_flight):
        submit_next()
    for future in running:
        raise_if_interrupted()  # one that a library swallowed stops the run at the next task
        yield future.batml_item, future
        submit_next()


def _in_process_cluster():
    """A cluster inside this process: the scheduler and one single-threaded worker, no dashboard.

    For inputs of one task per step, where starting worker processes (each importing the
    libraries and loading the model) would cost more CPU than the work itself.
    """
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, silence_logs=logging.CRITICAL,
        # no dashboard (nor bokeh's import); the scheduler's small HTTP server on any free port
        scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
    )  # fmt: skip


def _local_cluster(n_workers: int | None, threads_per_worker: int | None, memory_limit: str | None):
    from distributed import LocalCluster

    cfg = dask.config.get("batml.local")
    n_workers = n_workers or cfg.get("n_workers") or os.cpu_count() or 1
    with _sigint_ignored():  # worker processes inherit it: Ctrl-C is the command's to handle
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker or cfg.get("threads_per_worker") or 1,
            memory_limit=memory_limit or cfg.get("memory_limit") or "auto",
            processes=cfg.get("processes", True),
            dashboard_address=cfg.get("dashboard_address", ":0"),
            # A task that fails (a full disk...) is reported by the command in one line; the
            # workers' own "Compute Failed" log would add a traceback for every task.
            silence_logs=logging.CRITICAL,
        )


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT while local worker processes start, so that they inherit it.

    Ctrl-C in a terminal signals every process of the command; the command stops its
    cluster itself (exit status 130), and workers that also stopped on their own would
    each print a KeyboardInterrupt traceback. Python keeps an inherited ignored SIGINT.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def load_cluster_config(path: str | os.PathLike) -> None:
    """Merge a user's YAML profile into ``dask.config``, over every other source.

    Parameters
    ----------
    path : str or path-like
        A dask config file: ``batml: slurm: cluster: {queue: ...}`` and the like (see
        ``cluster/slurm.yaml``); any other dask key (``distributed: ...``) is merged too.
        It applies to this process (and the workers of a local cluster), until it exits.

    Raises
    ------
    ClusterError
        The file is missing or unreadable, is not YAML, or is not a mapping.
    """
    where = f"cluster config {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClusterError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterError(f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ClusterError(f"{where}: not valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from None
    if data is None:
        return
    if not isinstance(data, Mapping) or not isinstance(data.get("batml", {}), Mapping):
        raise ClusterError(f"{where}: expected a mapping of dask config keys, like 'batml: slurm: cluster: ...'")
    dask.config.update(dask.config.config, data, priority="new")


def slurm_cluster_options() -> dict:
    """Keyword arguments of :class:`dask_jobqueue.SLURMCluster`, from ``batml.slurm.cluster``.

    Keys may be written with ``-`` or ``_``; a null one leaves dask-jobqueue's own setting
    (``jobqueue.slurm``). ``python`` defaults to this interpreter, so the workers run the
    same environment (and batml); ``--preload-nanny pipeline.distributed``
    is added to the workers' arguments so that their nannies use batml's dask defaults too.

    Raises
    ------
    ClusterError
        ``batml.slurm.cluster`` is not a mapping.
    """
    cfg = dask.config.get("batml.slurm.cluster", default=None) or {}
    if not isinstance(cfg, Mapping):
        raise ClusterError("batml.slurm.cluster must be a mapping of dask_jobqueue.SLURMCluster arguments")
    options = {str(key).replace("-", "_"): value for key, value in cfg.items()}
    jobqueue = dask.config.get("jobqueue.slurm", default={})
    options["python"] = options.get("python") or jobqueue.get("python") or sys.executable
    extra = options.get("worker_extra_args")
    extra = list(jobqueue.get("worker-extra-args") or [] if extra is None else extra)
    if "pipeline.distributed" not in extra:
        extra += ["--preload-nanny", "pipeline.distributed"]
    options["worker_extra_args"] = extra
    return options


def _slurm_cluster(n_workers: int | None):
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ClusterError("--cluster slurm needs dask-jobqueue: pip install 'batml[slurm]'") from None
    if shutil.which("sbatch") is None:
        raise ClusterError("--cluster slurm needs SLURM's sbatch on PATH: run batml where you submit jobs")
    try:
        cluster = SLURMCluster(**slurm_cluster_options())
    except (TypeError, ValueError) as exc:
        raise ClusterError(f"batml.slurm.cluster: {str(exc).splitlines()[0]}") from None
    try:
        _check_slurm_job(cluster.job_script())
    except BaseException:
        cluster.close()
        raise
    cluster.scale(jobs=n_workers or dask.config.get("batml.slurm.jobs", 1))
    return cluster


def _check_slurm_job(job_script: str) -> None:
    """Ask SLURM whether it would run the worker job (``sbatch --test-only``: nothing is queued).

    Raises
    ------
    ClusterError
        SLURM refuses it (unknown partition or account, more CPUs or memory than a node
        has...) or does not answer within ``batml.connect_timeout``.
    """
    timeout = dask.utils.parse_timedelta(dask.config.get("batml.connect_timeout", "30s"))
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="batml-worker-") as script:
        script.write(job_script)
        script.flush()
        try:
            command = ["sbatch", "--test-only", script.name]
            out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"sbatch did not answer within {timeout:g} s: is SLURM's controller up?") from None
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"sbatch exit status {out.returncode}"]
        reason = lines[-1].removeprefix("sbatch: error: ").removeprefix("allocation failure: ")
        raise ClusterError(f"SLURM refuses batml's worker job (see batml.slurm.cluster): {reason}")


def _wait_for_slurm_worker(client) -> None:
    """Wait until one worker has joined (the others join as their jobs start).

    Raises
    ------
    ClusterError
        None within ``batml.slurm.wait``: the job is stuck in the queue or failed to start.
    """
    timeout = dask.utils.parse_timedelta(dask.config.get("batml.slurm.wait", "300s"))
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise ClusterError(
            f"no SLURM worker started within {timeout:g} s: check squeue (and the job's log) "
            "or raise batml.slurm.wait"
        ) from None


def running_client():
    """The Dask client this process is already using (``distributed.Client.current``), or None."""
    from distributed import Client

    try:
        return Client.current()
    except ValueError:
        return None


@contextlib.contextmanager
def connect(
    cluster: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    client=None,
    quiet: bool = False,
) -> Iterator:
    """A :class:`distributed.Client` for the duration of a ``with`` block.

    An existing ``client`` is used as is (and not closed). ``cluster=None`` (the default of
    every Python call) uses the client this process is already running, if any (a
    ``distributed.Client`` made in a notebook), and otherwise starts a local cluster;
    ``"local"`` (what the ``batml`` command passes) always starts one; ``"in-process"`` runs
    a scheduler and one single-threaded worker inside this process. Otherwise the named
    cluster is started (and stopped afterwards) or the scheduler address is connected to.
    The dashboard address of a started cluster is printed on standard error unless ``quiet``.

    With ``"slurm"``, ``n_workers`` SLURM jobs (default ``batml.slurm.jobs``) are submitted
    and the block starts once the first worker has joined; :class:`ClusterError` if none
    has within ``batml.slurm.wait``. The jobs are cancelled when the block ends.
    """
    from distributed import Client

    if client is None and cluster is None:
        client = running_client()
    if client is not None:
        yield client
        return
    cluster = cluster or "local"
    owned = None
    try:
        if cluster == "local":
            owned = _local_cluster(n_workers, threads_per_worker, memory_limit)
            new_client = Client(owned)
        elif cluster == IN_PROCESS:
            owned = _in_process_cluster()
            new_client = Client(owned)
        elif cluster == "slurm":
            owned = _slurm_cluster(n_workers)
            new_client = Client(owned)
        else:
            new_client = Client(cluster, timeout=dask.config.get("batml.connect_timeout", "30s"))
    except OSError as exc:
        if owned is not None:
            owned.close()
        raise ClusterError(f"cannot reach the Dask scheduler at {cluster}: {exc}") from None
    try:
        if not quiet and cluster != IN_PROCESS:
            print(f"Dask dashboard: {new_client.dashboard_link}", file=sys.stderr)
        if cluster == "slurm":
            _wait_for_slurm_worker(new_client)
        yield new_client
    finally:
        # Shutting down must not hide why we stop (an error, Ctrl-C, SIGTERM): a cluster
        # that is slow or fails to close is left to its processes' own exit.
        with contextlib.suppress(Exception):
            new_client.close()
        if owned is not None:
            with contextlib.suppress(Exception):
                owned.close()
