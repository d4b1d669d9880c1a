"""Ingest benchmark: throughput, peak worker memory and cube size for simulated archives.

Prints, for each archive size (hours of simulated audio):

- seconds of audio per CPU-second of the whole ingest (user + sys of the driver and of every
  worker process), and per wall-second;
- the peak resident memory of each worker (its high-water mark, VmHWM);
- cube bytes / audio bytes.

Targets of issue 2 (not asserted): >= 150 s of audio per CPU-second, cube <= 0.5x the audio,
peak worker memory within 20 % from 1 h to 5 h.

Usage::

    python benchmarks/ingest_throughput.py --hours 1 5 --workers 2 --data /tmp/batml-bench

Simulated archives are kept in ``--data`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
from pathlib import Path

import psutil


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds(pids) -> float:
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def archive(data: Path, hours: float) -> Path:
    from pipeline.simulation import simulate_archive

    root = data / f"sim-{hours:g}h"
    if not (root / "annotations.csv").exists():
        t0 = time.perf_counter()
        simulate_archive(root, minutes=60 * hours, seed=1, progress=True)
        print(f"simulated {hours:g} h in {time.perf_counter() - t0:.0f} s -> {root}")
    return root


def run(root: Path, cube: Path, workers: int) -> dict:
    from distributed import Client, LocalCluster

    from pipeline.ingestion import ingest

    shutil.rmtree(cube, ignore_errors=True)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        cpu0 = _cpu_seconds(pids + [os.getpid()])
        t0 = time.perf_counter()
        report = ingest(root, cube, client=client, progress=False)
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds(pids + [os.getpid()]) - cpu0
        peaks = sorted(client.run(_peak_rss_mb).values())
    audio_bytes = _bytes(root, "*.wav")
    return dict(
        audio_h=report.audio_seconds / 3600,
        files=report.n_files,
        wall=wall,
        cpu=cpu,
        per_cpu=report.audio_seconds / cpu,
        per_wall=report.audio_seconds / wall,
        peaks=peaks,
        ratio=_bytes(cube) / audio_bytes,
        audio_gb=audio_bytes / 1e9,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path("/tmp/batml-bench"))
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    print(f"{'archive':>8} {'files':>6} {'audio GB':>8} {'wall s':>7} {'CPU s':>7} "
          f"{'audio s/CPU s':>13} {'audio s/wall s':>14} {'peak MB/worker':>16} {'cube/audio':>10}")  # fmt: skip
    for hours in args.hours:
        root = archive(args.data, hours)
        r = run(root, args.data / f"cube-{hours:g}h.zarr", args.workers)
        peaks = "/".join(f"{p:.0f}" for p in r["peaks"])
        print(f"{r['audio_h']:7.2f}h {r['files']:6d} {r['audio_gb']:8.2f} {r['wall']:7.1f} {r['cpu']:7.1f} "
              f"{r['per_cpu']:13.1f} {r['per_wall']:14.1f} {peaks:>16} {r['ratio']:10.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
