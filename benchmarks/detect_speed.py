"""Speed, memory and accuracy of ``batml detect`` (issue 4's benchmark).

For two archives, each in a small and a 10x larger version:

- **real**: the real recordings of ``../shared/data/real/unannotated``, copied N times;
- **monitoring**: a simulated monitoring archive, most files without bats
  (``simulate_archive(empty_fraction=0.9)``),

it runs the whole ``batml detect`` command (a subprocess: the driver and every Dask worker
counted, user + sys CPU time) with 1 and 2 workers, and prints

- seconds of audio per CPU-second as the *marginal* cost between the small and the large
  archive, from the recordings (ingest included) and from an existing cube (detection only);
- the start-up cost (the intercept: CPU-seconds of a run on no audio);
- the peak resident memory of each worker process;
- for the monitoring archive, the detection AP of the fast path and of the dense reference
  (``--dense``: every window, boosters everywhere) against the simulated calls.

Targets of issue 4 (not asserted): >= 100 s of audio per CPU-second on the real files,
>= 300 on the monitoring archive, start-up <= 10 CPU-seconds, AP loss <= 0.005, peak worker
memory <= 2 GB, 2 workers >= 1.8x one worker (wall time).

Usage::

    python benchmarks/detect_speed.py [--copies 1 10] [--minutes 2 20] [--workers 1 2] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "unannotated"


def _watch_memory(pid: int, peaks: dict, stop: threading.Event) -> None:
    """Peak RSS (MB) of every descendant process of ``pid``, polled."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            for child in root.children(recursive=True):
                try:
                    rss = child.memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    continue
                peaks[child.pid] = max(peaks.get(child.pid, 0.0), rss)
        except psutil.NoSuchProcess:
            return
        time.sleep(0.2)


def run_detect(source: Path, out: Path, workers: int, extra=()) -> dict:
    """Run ``batml detect`` as a subprocess; its CPU seconds (all descendants), wall, memory."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "pipeline.cli", "detect", str(source), "--out", str(out), "--workers", str(workers),
           "-q", *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_memory, args=(proc.pid, peaks, stop), daemon=True)
    watcher.start()
    _, err = proc.communicate()
    stop.set()
    watcher.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"batml detect failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    workers_mb = sorted(peaks.values(), reverse=True)[:workers]
    return {"cpu": cpu, "wall": wall, "peak_mb": workers_mb}


def audio_seconds(folder: Path) -> float:
    import soundfile as sf

    return sum(sf.info(str(f)).duration for f in folder.rglob("*") if f.suffix.lower() == ".wav")


def real_archive(root: Path, copies: int) -> Path:
    folder = root / f"real-x{copies}"
    if not folder.exists():
        for k in range(copies):
            for f in sorted(REAL.iterdir()):
                target = folder / f"copy{k:03d}" / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
    return folder


def monitoring_archive(root: Path, minutes: float) -> Path:
    from pipeline.simulation import simulate_archive

    folder = root / f"monitoring-{minutes:g}min"
    if not folder.exists():
        simulate_archive(folder, minutes=minutes, seed=11, empty_fraction=0.9)
    return folder


def detection_ap(archive: Path, out: Path) -> float:
    """Detection AP of a run's events against the simulated calls (matched within 10 ms)."""
    from pipeline.evaluation.metrics import detection_average_precision
    from pipeline.outputs.parts import read_detections

    calls = pd.read_csv(archive / "annotations.csv")
    calls = pd.DataFrame({"recording": [str(archive / f"{f}.wav") for f in calls["file"]], "position": calls["position"],
                          "class": calls["class"]})  # fmt: skip
    events = read_detections(out)
    detections = pd.DataFrame({"recording": events["file"].astype(str), "time": events["time"], "score": events["score"]})
    return detection_average_precision(calls, detections).average_precision


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs=2, default=(1, 10), help="copies of the real files: small, large")
    parser.add_argument("--minutes", type=float, nargs=2, default=(2.0, 20.0), help="monitoring archive: small, large")
    parser.add_argument("--workers", type=int, nargs="+", default=(1, 2))
    parser.add_argument("--model", help="model bundle (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "batml-detect-bench")
    parser.add_argument("--skip-dense", action="store_true", help="skip the fast-path ideas vs the dense reference (slow)")
    parser.add_argument("--ideas-only", action="store_true", help="only the fast-path ideas (on the large monitoring archive)")
    args = parser.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    extra = ("--model", args.model) if args.model else ()
    archives = {
        "real": [real_archive(args.data, n) for n in args.copies],
        "monitoring": [monitoring_archive(args.data, m) for m in args.minutes],
    }
    if args.ideas_only:
        ideas(args.data, archives["monitoring"][1], max(args.workers), extra)
        return
    print(f"{'archive':>10} {'from':>5} {'workers':>7} {'audio s':>8} {'CPU s':>7} {'wall s':>7} "
          f"{'marginal audio s/CPU s':>22} {'start-up CPU s':>14} {'peak MB/worker':>15}")  # fmt: skip
    walls: dict = {}
    for name, (small, large) in archives.items():
        seconds = [audio_seconds(small), audio_seconds(large)]
        for workers in args.workers:
            for source in ("audio", "cube"):
                runs = []
                for folder in (small, large):
                    out = args.data / "out" / f"{folder.name}-w{workers}"
                    if source == "audio":
                        shutil.rmtree(out, ignore_errors=True)
                        runs.append(run_detect(folder, out, workers, extra))
                    else:
                        again = out.with_name(out.name + "-cube")
                        shutil.rmtree(again, ignore_errors=True)
                        runs.append(run_detect(out / "cube.zarr", again, workers, extra))
                marginal = (seconds[1] - seconds[0]) / max(runs[1]["cpu"] - runs[0]["cpu"], 1e-9)
                startup = runs[0]["cpu"] - seconds[0] / marginal
                walls[(name, source, workers)] = runs[1]["wall"]
                peak = "/".join(f"{m:.0f}" for m in runs[1]["peak_mb"])
                for audio, run in zip(seconds, runs):
                    print(f"{name:>10} {source:>5} {workers:>7} {audio:8.1f} {run['cpu']:7.1f} {run['wall']:7.1f}", end="")
                    print(f" {marginal:22.1f} {startup:14.1f} {peak:>15}" if run is runs[1] else "")
    for (name, source, workers), wall in walls.items():
        if workers == 2 and (name, source, 1) in walls:
            print(f"{name} from {source}: 2 workers {walls[(name, source, 1)] / wall:.2f}x faster than 1 (wall, large archive)")
    if not args.skip_dense:
        ideas(args.data, archives["monitoring"][1], max(args.workers), extra)


#: The fast-path ideas measured against the dense reference: (name, extra options).
IDEAS = (
    ("dense (every window, boosters everywhere)", ("--dense",)),
    ("boosters gated at 0.01, every window", ("--scan-stride", "1", "--booster-gate", "0.01")),
    ("+ coarse-to-fine stride 2", ("--scan-stride", "2")),
    ("+ coarse-to-fine stride 4 (default)", ()),
    ("+ coarse-to-fine stride 8", ("--scan-stride", "8")),
)


def ideas(data: Path, archive: Path, workers: int, extra=()) -> None:
    """Each fast-path idea, from the archive's cube, at a detection threshold of 0.5 (every
    event: the whole precision-recall curve): CPU cost and detection AP."""
    cube = data / "out" / f"{archive.name}-w{workers}" / "cube.zarr"
    if not cube.exists():
        run_detect(archive, cube.parent, workers, extra)
    seconds = audio_seconds(archive)
    print(f"\nfast-path ideas on {archive.name} ({seconds:.0f} s of audio, from its cube, {workers} workers):")
    print(f"{'idea':<45} {'CPU s':>7} {'audio s/CPU s':>13} {'detection AP':>12} {'AP loss':>8}")
    reference = None
    for k, (name, options) in enumerate(IDEAS):
        out = data / "out" / f"{archive.name}-idea{k}"
        shutil.rmtree(out, ignore_errors=True)
        run = run_detect(cube, out, workers, (*extra, "--threshold", "0.5", "--format", "parquet", *options))
        ap = detection_ap(archive, out)
        reference = ap if reference is None else reference
        print(f"{name:<45} {run['cpu']:7.1f} {seconds / run['cpu']:13.1f} {ap:12.4f} {reference - ap:+8.4f}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
