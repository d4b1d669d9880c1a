"""Load test of ``batml detect`` (issue 6, item 4): many short files, and one long recording.

It writes (cheaply: numpy noise, with a short FM call in one file in ten) a simulated archive
of N short files (``--files``, e.g. ``1000 5000 50000``; the smaller archives are hard links
to the first files of the largest, so they take no more disk) and one long recording
(``--hour-minutes``, 60 for 1 hour), all at 384 kHz, 16 bit. Then, for each archive, it runs
``detect`` from the audio (manifest, ingest and detection: :func:`pipeline.detect_archive.
detect_archive`, the code of ``batml detect``) on a fresh cluster: a ``dask scheduler``
process and ``--workers`` worker processes (one thread each, batml's dask defaults),
reached by address like ``batml detect --cluster ADDRESS``, so that each process is
measured on its own. It prints

- files, seconds of audio, wall and CPU seconds (driver + scheduler + workers, user + sys);
- throughput: seconds of audio per CPU-second and files per second (wall);
- peak resident memory (RSS, polled every 0.2 s) of each worker, of the scheduler and of
  the driver, over the run and in each tenth of it (growth shows as a rising row);
- the Dask tasks: how many the scheduler was given (by kind), and the most it held at once.

Targets (not asserted): worker and scheduler peaks that do not grow with the number of
files (the task graph is bounded: batches of files per manifest task, chunks of the cube
per ingest and detect task, a few tasks per worker thread in flight), and the long
recording processed in bounded memory (read in pieces, <= 2 GB per worker).

Usage::

    python benchmarks/load.py [--files 1000 5000 50000] [--file-seconds 0.2] [--hour-minutes 60]
                              [--workers 2] [--data /tmp/batml-load] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
from distributed.diagnostics.plugin import SchedulerPlugin

RATE = 384_000
FILES_PER_FOLDER = 1000


# --- the archive ---------------------------------------------------------------------------


def _call(rng: np.random.Generator) -> np.ndarray:
    """One FM bat-like call: a 4 ms sweep from about 90 to 40 kHz, Hann window (int16 units)."""
    n = int(0.004 * RATE)
    t = np.arange(n) / RATE
    f0, f1 = rng.uniform(80e3, 100e3), rng.uniform(35e3, 45e3)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))
    return rng.uniform(2000, 8000) * np.hanning(n) * np.sin(phase)


def _noise_pool(n_samples: int, rng: np.random.Generator, size: int = 64) -> list[np.ndarray]:
    return [rng.normal(0.0, 30.0, n_samples) for _ in range(size)]


def short_archive(root: Path, n_files: int, seconds: float, largest: int) -> Path:
    """``n_files`` files of ``seconds`` each; hard links to the first ones of the largest archive."""
    folder = root / f"short-{n_files}x{seconds:g}s"
    if folder.exists():
        return folder
    big = root / f"short-{largest}x{seconds:g}s"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if big.exists() and n_files <= largest and big != folder:
        for i in range(n_files):
            name = _short_name(i)
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            os.link(big / name, tmp / name)
    else:
        rng = np.random.default_rng(6)
        n = int(round(seconds * RATE))
        pool = _noise_pool(n, rng)
        for i in range(n_files):
            samples = pool[i % len(pool)]
            if i % 10 == 0:  # one file in ten holds a call
                samples = samples.copy()
                call = _call(rng)
                at = int(rng.integers(0, n - len(call)))
                samples[at : at + len(call)] += call
            (tmp / _short_name(i)).parent.mkdir(parents=True, exist_ok=True)
            sf.write(tmp / _short_name(i), np.clip(samples, -32768, 32767).astype(np.int16), RATE, subtype="PCM_16")
    tmp.rename(folder)
    return folder


def _short_name(i: int) -> str:
    return f"site{i // FILES_PER_FOLDER:04d}/rec{i:07d}.wav"


def long_archive(root: Path, minutes: float) -> Path:
    """One recording of ``minutes``, written 10 s at a time: noise, a call every ~0.5 s."""
    folder = root / f"long-{minutes:g}min"
    if folder.exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(7)
    block = 10 * RATE
    pool = _noise_pool(block, rng, size=4)
    total = int(round(minutes * 60 * RATE))
    with sf.SoundFile(tmp / "night.wav", "w", samplerate=RATE, channels=1, subtype="PCM_16") as out:
        for k, start in enumerate(range(0, total, block)):
            samples = pool[k % len(pool)][: min(block, total - start)].copy()
            for at in rng.integers(0, len(samples) - 2000, size=len(samples) // (RATE // 2)):
                call = _call(rng)
                samples[at : at + len(call)] += call[: len(samples) - at]
            out.write(np.clip(samples, -32768, 32767).astype(np.int16))
    tmp.rename(folder)
    return folder


# --- a cluster whose processes can be measured ------------------------------------------------


class TaskCounter(SchedulerPlugin):
    """A scheduler plugin: the tasks the scheduler was given, by kind, and the most it held."""

    name = "batml-load-tasks"

    def __init__(self):
        self.by_kind: dict = {}
        self.seen: set = set()
        self.peak_held = 0

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        from distributed.utils import key_split

        if key not in self.seen and finish != "forgotten":
            self.seen.add(key)
            kind = key_split(key)
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self.peak_held = max(self.peak_held, len(self.scheduler.tasks))

    def summary(self) -> dict:
        return {"by_kind": dict(self.by_kind), "total": len(self.seen), "peak_held": self.peak_held}


def _summary(dask_scheduler):
    return dask_scheduler.plugins[TaskCounter.name].summary()


class Cluster:
    """A ``dask scheduler`` process and a ``dask worker`` process with ``workers`` workers."""

    def __init__(self, workers: int, scratch: Path):
        scratch.mkdir(parents=True, exist_ok=True)
        self.file = scratch / "scheduler.json"
        self.file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": open(scratch / "cluster.log", "a")}
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(self.file),
             "--port", "0", "--dashboard-address", ":0", "--no-show", "--preload", "pipeline.distributed"],
            env=env, **quiet,
        )  # fmt: skip
        while not self.file.exists():
            time.sleep(0.2)
        self.workers = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(self.file),
             "--nworkers", str(workers), "--nthreads", "1", "--memory-limit", "auto",
             "--preload-nanny", "pipeline.distributed", "--local-directory", str(scratch), "--no-dashboard"],
            env=env, **quiet,
        )  # fmt: skip
        from distributed import Client

        self.client = Client(scheduler_file=str(self.file))
        self.client.wait_for_workers(workers, timeout=120)
        self.client.register_plugin(TaskCounter())
        self.worker_pids = sorted(self.client.run(os.getpid).values())

    def close(self) -> None:
        self.client.close()
        for proc in (self.workers, self.scheduler):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


class Sampler:
    """Peak RSS (MB) of named processes, polled from a thread, overall and in each tenth of the run."""

    def __init__(self, pids: dict, every: float = 0.2):
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            rss = {}
            for name, proc in self.procs.items():
                try:
                    rss[name] = proc.memory_info().rss / 2**20
                except psutil.Error:
                    pass
            self.samples.append((time.perf_counter(), rss))
            time.sleep(every)

    @property
    def peak(self) -> dict:
        """``{name: peak MB over the run}``."""
        return {name: max((rss.get(name, 0.0) for _, rss in self.samples), default=0.0) for name in self.procs}

    def peaks_by_tenth(self) -> dict:
        """``{name: [peak MB in each tenth of the run's time]}``: growth shows as a rising row."""
        if not self.samples:
            return {}
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        out = {name: [0.0] * 10 for name in self.procs}
        for t, rss in self.samples:
            tenth = min(9, int(10 * (t - t0) / max(t1 - t0, 1e-9)))
            for name, mb in rss.items():
                out[name][tenth] = max(out[name][tenth], mb)
        return out

    def cpu(self) -> float:
        """User + sys CPU seconds of the processes so far."""
        total = 0.0
        for proc in self.procs.values():
            try:
                if proc.pid == os.getpid():
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    total += usage.ru_utime + usage.ru_stime
                else:
                    times = proc.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(source: Path, out: Path, workers: int, scratch: Path) -> dict:
    """``detect`` of one archive on a fresh cluster: its report, time, CPU, memory and tasks."""
    from pipeline.detection.archive import detect_archive

    shutil.rmtree(out, ignore_errors=True)
    cluster = Cluster(workers, scratch)
    try:
        pids = {f"worker{k}": pid for k, pid in enumerate(cluster.worker_pids)}
        pids.update(scheduler=cluster.scheduler.pid, driver=os.getpid())
        with Sampler(pids) as sampler:
            cpu0, t0 = sampler.cpu(), time.perf_counter()
            report = detect_archive(source, out, client=cluster.client, progress=False)
            wall, cpu = time.perf_counter() - t0, sampler.cpu() - cpu0
        tasks = cluster.client.run_on_scheduler(_summary)
    finally:
        cluster.close()
    if not report.complete:
        raise SystemExit(f"detect of {source} did not finish: {report.errors[:3]}")
    return {
        "files": report.n_files, "audio_s": report.audio_seconds, "wall_s": wall, "cpu_s": cpu,
        "detections": report.n_detections, "timings": report.timings, "tasks": tasks, "peak_mb": sampler.peak,
        "peak_mb_by_tenth": sampler.peaks_by_tenth(),
    }  # fmt: skip


# --- the report ------------------------------------------------------------------------------


def print_table(rows: list[tuple[str, dict]]) -> None:
    print(f"{'archive':<22} {'files':>7} {'audio s':>9} {'wall s':>8} {'CPU s':>8} {'audio s/CPU s':>13} "
          f"{'files/s':>8} {'tasks':>6} {'held':>5} {'peak MB: workers':>17} {'sched':>6} {'driver':>6}")  # fmt: skip
    for name, r in rows:
        workers = "/".join(f"{v:.0f}" for k, v in sorted(r["peak_mb"].items()) if k.startswith("worker"))
        print(f"{name:<22} {r['files']:>7} {r['audio_s']:9.0f} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} "
              f"{r['audio_s'] / r['cpu_s']:13.2f} {r['files'] / r['wall_s']:8.1f} {r['tasks']['total']:>6} "
              f"{r['tasks']['peak_held']:>5} {workers:>17} {r['peak_mb']['scheduler']:6.0f} {r['peak_mb']['driver']:6.0f}")  # fmt: skip
    for name, r in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["tasks"]["by_kind"].items()))
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in r["timings"].items())
        print(f"  {name}: tasks: {kinds}; steps: {steps}; detections: {r['detections']}")
        for process, tenths in sorted(r["peak_mb_by_tenth"].items()):
            print(f"    peak MB of {process} in each tenth of the run: {' '.join(f'{mb:.0f}' for mb in tenths)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[50_000], help="short files per archive (each size)")
    parser.add_argument("--file-seconds", type=float, default=0.2, help="duration of each short file")
    parser.add_argument("--hour-minutes", type=float, default=60.0, help="the long recording (0: none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "batml-load")
    parser.add_argument("--keep", action="store_true", help="keep the archives and outputs (default: delete them)")
    args = parser.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill: print what was measured, clean up
    sizes = sorted(set(args.files))
    rows = []
    try:
        t0 = time.perf_counter()
        archives = [short_archive(args.data, n, args.file_seconds, sizes[-1]) for n in reversed(sizes)][::-1]
        long = long_archive(args.data, args.hour_minutes) if args.hour_minutes > 0 else None
        print(f"archives written in {time.perf_counter() - t0:.0f} s under {args.data}", flush=True)
        # The long recording first, then the archives from small to large: a run cut short
        # still has the long recording and the growth with the number of files so far.
        runs = ([(f"1 x {args.hour_minutes:g} min", long)] if long is not None else []) + [
            (f"{n} x {args.file_seconds:g} s", folder) for n, folder in zip(sizes, archives)
        ]
        for name, folder in runs:
            print(f"{time.strftime('%H:%M:%S')} detect {folder.name}", flush=True)
            result = run(folder, args.data / "out" / folder.name, args.workers, args.data / "scratch")
            rows.append((name, result))
            print(json.dumps({"archive": folder.name, **result}), flush=True)
    finally:
        if rows:
            print()
            print_table(rows)
        if not args.keep:
            shutil.rmtree(args.data, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
