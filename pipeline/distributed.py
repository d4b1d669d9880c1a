"""Dask clusters: where batml's work runs.

``cluster`` names where: ``"local"`` (default) starts a :class:`distributed.LocalCluster` on
this machine; ``"slurm"`` starts workers as SLURM jobs through dask-jobqueue; anything else
is the address of a running scheduler (``tcp://host:8786``). Defaults live in
``pipeline/distributed.yaml``, merged into ``dask.config`` under ``batml``, so every key can
be overridden by a YAML file in ``~/.config/dask/``, an environment variable
(``DASK_BATML__LOCAL__N_WORKERS=4``) or a keyword.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import dask.config
import yaml

_DEFAULTS = Path(__file__).with_name("distributed.yaml")


def _load_defaults() -> None:
    import distributed  # noqa: F401  (its own defaults first, so that ours can override them)

    with _DEFAULTS.open() as fh:
        defaults = yaml.safe_load(fh)
    dask.config.update_defaults(defaults)


_load_defaults()


class ClusterError(RuntimeError):
    """A cluster that could not be started or reached; one line for the user."""


def worker_threads(client) -> int:
    """Total threads of the cluster's workers (at least 1)."""
    return max(1, sum(client.nthreads().values()))


def _local_cluster(n_workers: int | None, threads_per_worker: int | None, memory_limit: str | None):
    from distributed import LocalCluster

    cfg = dask.config.get("batml.local")
    n_workers = n_workers or cfg.get("n_workers") or os.cpu_count() or 1
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker or cfg.get("threads_per_worker") or 1,
        memory_limit=memory_limit or cfg.get("memory_limit") or "auto",
        processes=cfg.get("processes", True),
        dashboard_address=cfg.get("dashboard_address", ":0"),
        silence_logs=logging.ERROR,
    )


def _slurm_cluster(n_workers: int | None):
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ClusterError("--cluster slurm needs dask-jobqueue: pip install 'batml[slurm]'") from None
    cluster = SLURMCluster(**(dask.config.get("batml.slurm.cluster") or {}))
    cluster.scale(jobs=n_workers or dask.config.get("batml.slurm.jobs", 1))
    return cluster


@contextlib.contextmanager
def connect(
    cluster: str | None = "local",
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    client=None,
    quiet: bool = False,
) -> Iterator:
    """A :class:`distributed.Client` for the duration of a ``with`` block.

    An existing ``client`` is used as is (and not closed). Otherwise the named cluster is
    started (and stopped afterwards) or the scheduler address is connected to. The
    dashboard address is printed on standard error unless ``quiet``.
    """
    from distributed import Client

    if client is not None:
        yield client
        return
    cluster = cluster or "local"
    owned = None
    try:
        if cluster == "local":
            owned = _local_cluster(n_workers, threads_per_worker, memory_limit)
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
        if not quiet:
            print(f"Dask dashboard: {new_client.dashboard_link}", file=sys.stderr)
        yield new_client
    finally:
        # Shutting down must not hide why we stop (an error, Ctrl-C, SIGTERM): a cluster
        # that is slow or fails to close is left to its processes' own exit.
        with contextlib.suppress(Exception):
            new_client.close()
        if owned is not None:
            with contextlib.suppress(Exception):
                owned.close()
