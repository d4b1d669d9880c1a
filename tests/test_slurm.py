"""``--cluster slurm`` on a real single-node SLURM (the ``slurm`` fixture), and cluster profiles."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import dask.config
import numpy as np
import pytest

from pipeline.distributed import ClusterError, connect, load_cluster_config, slurm_cluster_options

BATML = Path(sys.executable).with_name("batml")

# Small SLURM workers for a 2-core test machine; the jobs' output goes to the test's folder.
SMALL_WORKER = {"cores": 1, "processes": 1, "memory": "2GiB", "walltime": "00:30:00"}


def _small_worker_env(log_directory: Path) -> dict[str, str]:
    env = {f"DASK_BATML__SLURM__CLUSTER__{key.upper()}": str(value) for key, value in SMALL_WORKER.items()}
    env["DASK_BATML__SLURM__CLUSTER__LOG_DIRECTORY"] = str(log_directory)
    return {**os.environ, **env}


@pytest.mark.slurm
def test_the_fixture_runs_srun_and_sbatch_jobs(slurm, tmp_path):
    assert os.environ["SLURM_CONF"] == str(slurm.conf)
    out = slurm.run("srun", "-N1", "-n1", "hostname", timeout=120)
    assert out.stdout.strip().split(".")[0] == slurm.hostname
    done = tmp_path / "done.txt"
    job = ["sbatch", "--wait", "-o", str(tmp_path / "job.out"), "--wrap", f"echo $SLURM_JOB_ID > {done}"]
    slurm.run(*job, timeout=120)
    assert done.read_text().strip().isdigit()


@pytest.mark.slurm
def test_connect_runs_work_in_a_slurm_job_and_cancels_it(slurm, tmp_path):
    with dask.config.set({"batml.slurm.cluster": {**SMALL_WORKER, "log_directory": str(tmp_path)}}):
        with connect("slurm", n_workers=1, quiet=True) as client:
            jobs = slurm.jobs()
            # functions of importable modules: the worker cannot import this test module
            pid = client.submit(os.getpid, pure=False).result(timeout=120)
            job = client.submit(os.getenv, "SLURM_JOB_ID", pure=False).result(timeout=120)
            malloc_trim = client.submit(os.getenv, "MALLOC_TRIM_THRESHOLD_", pure=False).result(timeout=120)
    assert len(jobs) == 1 and job == jobs[0]
    assert pid != os.getpid()
    # the nanny read batml's dask defaults (--preload-nanny pipeline.distributed)
    assert malloc_trim is None
    assert slurm.jobs_after_end(jobs) == []


@pytest.mark.slurm
def test_a_job_that_cannot_start_is_one_line(slurm, tmp_path):
    cluster = {**SMALL_WORKER, "log_directory": str(tmp_path), "job_extra_directives": ["--begin=now+1hour"]}
    with dask.config.set({"batml.slurm.cluster": cluster, "batml.slurm.wait": "5s"}):
        with pytest.raises(ClusterError, match=r"^no SLURM worker started within 5 s: check squeue"):
            with connect("slurm", quiet=True):
                pass
    assert slurm.jobs_after_end(slurm.jobs()) == []


@pytest.mark.slurm
@pytest.mark.parametrize(
    "override, reason",
    [
        ({"queue": "nope"}, "Invalid partition name specified"),
        ({"cores": 64}, "Requested node configuration is not available"),
    ],
)
def test_a_job_slurm_refuses_is_one_line_at_once(slurm, tmp_path, override, reason):
    cluster = {**SMALL_WORKER, "log_directory": str(tmp_path), **override}
    with dask.config.set({"batml.slurm.cluster": cluster}):
        with pytest.raises(ClusterError, match=f"^SLURM refuses batml's worker job .*: {reason}$"):
            with connect("slurm", quiet=True):
                pass
    assert slurm.jobs() == []


def test_slurm_without_sbatch_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match="needs SLURM's sbatch on PATH"):
        with connect("slurm", quiet=True):
            pass


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny simulated archive and its cube made on the local cluster: (audio folder, spectrogram)."""
    from pipeline.cli import main
    from pipeline.simulation import simulate_archive

    root = tmp_path_factory.mktemp("slurm_archive")
    simulate_archive(root / "audio", minutes=0.2, seed=3)
    assert main(["ingest", str(root / "audio"), "--cube", str(root / "local.zarr"), "--workers", "1", "-q"]) == 0
    spectrogram = _spectrogram(root / "local.zarr")
    assert spectrogram.size and np.isfinite(spectrogram).any()
    return root / "audio", spectrogram


def _spectrogram(cube: Path) -> np.ndarray:
    from pipeline.io.cube import open_cube

    return open_cube(cube)["spectrogram"].values


@pytest.mark.slurm
def test_ingest_on_slurm_gives_the_local_cube(slurm, archive, tmp_path):
    audio, local = archive
    out = subprocess.run(
        [str(BATML), "ingest", str(audio), "--cube", str(tmp_path / "slurm.zarr"), "--cluster", "slurm", "-q"],
        env=_small_worker_env(tmp_path / "jobs"), cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "jobs").glob("*.err")), "the ingest ran no SLURM job"
    assert np.array_equal(local, _spectrogram(tmp_path / "slurm.zarr"), equal_nan=True)
    assert slurm.jobs_after_end(slurm.jobs()) == []


@pytest.mark.slurm
def test_the_sbatch_example_runs_batml_inside_its_allocation(slurm, archive, tmp_path):
    audio, local = archive
    script = Path(__file__).resolve().parents[1] / "cluster" / "sbatch-example.sh"
    log = tmp_path / "job.out"
    out = slurm.run(
        "sbatch", "--wait", "--nodes=1", "--ntasks=1", "--cpus-per-task=1", "--mem-per-cpu=2G",
        "--time=00:30:00", f"--output={log}", f"--chdir={tmp_path}",
        str(script), "ingest", str(audio), "--cube", str(tmp_path / "sbatch.zarr"), "-q",
        env={"BATML_VENV": str(Path(sys.executable).parents[1])}, timeout=900, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + (log.read_text() if log.exists() else "")
    assert "Dask scheduler tcp://" in log.read_text()
    assert np.array_equal(local, _spectrogram(tmp_path / "sbatch.zarr"), equal_nan=True)
    assert not list(tmp_path.glob("dask-scheduler-*.json"))


@pytest.mark.slurm
def test_detect_on_slurm_gives_the_local_detections(slurm, tmp_path):
    """``batml detect --cluster slurm`` (model loaded in a SLURM job's worker) writes the
    detections of a local run."""
    import pandas as pd

    from pipeline.cli import main
    from pipeline.outputs.parts import read_detections
    from pipeline.simulation import simulate_archive

    audio = tmp_path / "audio"
    simulate_archive(audio, minutes=0.2, seed=5, empty_fraction=0.0)
    assert main(["detect", str(audio), "--out", str(tmp_path / "local"), "--workers", "1", "-q"]) == 0
    env = {**_small_worker_env(tmp_path / "jobs"), "DASK_BATML__SLURM__CLUSTER__MEMORY": "3GiB"}
    out = subprocess.run(
        [str(BATML), "detect", str(audio), "--out", str(tmp_path / "slurm"), "--cluster", "slurm", "-q"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "jobs").glob("*.err")), "the detection ran no SLURM job"
    local, on_slurm = read_detections(tmp_path / "local"), read_detections(tmp_path / "slurm")
    assert len(local) > 0
    pd.testing.assert_frame_equal(local, on_slurm, check_exact=False, atol=1e-5)
    assert (tmp_path / "slurm" / "detections.csv").is_file() and (tmp_path / "slurm" / "report.json").is_file()
    assert slurm.jobs_after_end(slurm.jobs()) == []


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("batml: [slurm\n", "not valid YAML (line 2)"),
        ("- slurm\n", "expected a mapping of dask config keys"),
    ],
)
def test_a_bad_cluster_config_is_a_one_line_usage_error(tmp_path, content, message):
    config = tmp_path / "profile.yaml"
    if content is not None:
        config.write_text(content)
    out = subprocess.run(
        [str(BATML), "ingest", str(tmp_path), "--cube", str(tmp_path / "c.zarr"), "--cluster-config", str(config)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith(f"batml: error: cluster config {config}: {message}")
    assert out.stderr.count("\n") == 1 and out.stderr.endswith("\n")


@pytest.fixture
def own_dask_config():
    """dask.config as it was before the test, restored after it (the tests below change it globally)."""
    saved = copy.deepcopy(dask.config.config)
    yield
    dask.config.config.clear()
    dask.config.config.update(saved)


def test_a_cluster_config_overrides_the_defaults(tmp_path, own_dask_config):
    config = tmp_path / "profile.yaml"
    config.write_text("batml:\n  slurm:\n    cluster:\n      queue: long\n      job-extra-directives: ['--qos=low']\n")
    load_cluster_config(config)
    options = slurm_cluster_options()
    assert options["queue"] == "long" and options["job_extra_directives"] == ["--qos=low"]
    assert options["cores"] == 2 and options["python"] == sys.executable
    assert options["worker_extra_args"] == ["--preload-nanny", "pipeline.distributed"]


def test_environment_variables_override_the_defaults(monkeypatch, own_dask_config):
    monkeypatch.setenv("DASK_BATML__SLURM__CLUSTER__QUEUE", "short")
    monkeypatch.setenv("DASK_BATML__SLURM__CLUSTER__MEMORY", "8GiB")
    dask.config.refresh()
    options = slurm_cluster_options()
    assert options["queue"] == "short" and options["memory"] == "8GiB" and options["cores"] == 2


def test_the_example_profile_is_valid(own_dask_config):
    from dask_jobqueue import SLURMCluster

    load_cluster_config(Path(__file__).resolve().parents[1] / "cluster" / "slurm.yaml")
    cluster = SLURMCluster(**slurm_cluster_options())
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p" in script and "--preload-nanny pipeline.distributed" in script
