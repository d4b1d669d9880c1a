"""Shared fixtures: real recordings, small simulated archives, a Dask cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"

# TensorFlow and friends: keep worker processes quiet and single-threaded in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _test_cache() -> str:
    """A cache folder of this test session for the graphs exported on load (workers inherit it)."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="batml-test-cache-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


os.environ.setdefault("BATML_CACHE_DIR", _test_cache())


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real recordings (../shared/data/real); skips when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real recordings not found at {REAL_DATA} (see ../shared/data/README.md)")
    return REAL_DATA


@pytest.fixture(scope="session")
def client():
    """A real two-worker LocalCluster shared by the tests that need Dask."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory):
    """A 1-minute simulated archive (read only: copy it before changing it)."""
    from pipeline.simulation import simulate_archive

    return simulate_archive(tmp_path_factory.mktemp("archive"), minutes=1.0, seed=7)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node SLURM (munged, slurmctld, slurmd), installed with apt if missing.

    ``SLURM_CONF`` points at its configuration in ``os.environ`` while the fixture is alive,
    so dask-jobqueue's sbatch/squeue/scancel and ``batml`` subprocesses use it. Yields a
    :class:`slurm_cluster.SlurmNode` (tests/slurm_cluster.py); skips when SLURM cannot be installed.
    """
    from slurm_cluster import SlurmStartError, ensure_installed, start_slurm, stop_slurm

    ensure_installed()
    try:
        node = start_slurm(tmp_path_factory.mktemp("slurm"))
    except SlurmStartError as exc:
        pytest.fail(f"SLURM did not start: {exc}", pytrace=False)
    with pytest.MonkeyPatch.context() as env:
        for name, value in node.env.items():
            env.setenv(name, value)
        try:
            yield node
        finally:
            stop_slurm(node)


@pytest.fixture(scope="session")
def mixed_archive(tmp_path_factory, small_archive):
    """The small simulated archive plus the corpus of bad files (``odd/``), with what each
    should give (read only); ``(root, corpus)``."""
    import shutil

    from pipeline.testing import write_bad_corpus

    root = tmp_path_factory.mktemp("mixed") / "audio"
    shutil.copytree(small_archive.root, root, ignore=shutil.ignore_patterns("annotations.*"))
    corpus = write_bad_corpus(root / "odd")
    return root, corpus
