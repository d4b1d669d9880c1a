"""Speed, memory and accuracy of ``batml detect`` and of its device export (issue 17's table).

Three sections (``--sections``, default all):

**speed**: the whole ``batml detect`` command (a subprocess: the driver and every Dask worker
counted, user + sys CPU time), on

- **real**: the real Batlogger recordings ``../shared/data/real/unannotated/0166_*.wav`` (dense bat
  passes, 5 x 4 s; CC BY-NC 4.0, from the batdetect2 repository), copied ``--copies`` times
  (default 1 and 8: 20 s and 161 s of audio);
- **monitoring**: a simulated monitoring archive, 90 % of its files without bats, of ``--minutes``
  (default 2 and 26: the large one spans at least 20 cube chunks),

with the default command (``--cluster auto``: in this process for an input of at most one cube
chunk, else a local cluster of one worker per core), ``--cluster in-process``, and a local
cluster of 1 and 2 workers (``--workers``). For each it prints the CPU seconds, the wall time, the
*marginal* seconds of audio per CPU-second between the two sizes (so that start-up does not count),
the *start-up* CPU-seconds (the small run's CPU beyond its marginal cost) and the peak resident
memory of each worker process. Then issue 17's table (batml's defaults beside batdetect2, run on
the same files when ``--peer PATH_TO_BATDETECT2`` is given: ``PATH detect AUDIO_DIR OUT_DIR 0.3``,
installed in its own environment, never a dependency of batml) and the speed-up of 2 workers
over 1 on the large monitoring archive (wall time).

**accuracy**: the detection AP (and class mAP) of the fast path against dense float scoring
(every window, the boosters everywhere) on a simulated test split (``--sim-minutes``, seed 5, half
the files for testing, independent of any training), on the three annotated real recordings
(batdetect2's examples, CC BY-NC 4.0) and on the Tadarida sample (GPL-3; detection only: its
species are not the model's classes), through batml's own scorer
(:class:`pipeline.detection.scorers.WindowScorer`, as the workers run it): dense float; the
default fast path; the same on the bundle's int8 graphs, when it has them; the boosters near the
head's peaks (margin 3); the share of columns the boosters ran on.

**export**: ``batml export`` of the model (float, and int8: the bundle's, else quantized with
the simulated training split as calibration): its size, the reference runner's cost per second of
audio on one core (one thread, on the real files x1), and its detection AP beside batml's float
model's on the same sets (the runner's events at detection threshold 0).

Targets of issue 17 (not asserted): marginal cost on the real files >= 25x lower than
batdetect2's (about 85 s of audio per CPU-second), >= 300 on the monitoring archive, start-up
<= 5 CPU-seconds for a 20 s archive with the default cluster, 2 workers >= 1.8x one on an archive
of at least 20 chunks, AP loss <= 0.005, worker memory <= 2 GB.

Usage::

    python benchmarks/detect_speed.py [--model DIR] [--peer PATH] [--sections speed accuracy export]
                                      [--copies 1 8] [--minutes 2 26] [--data DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL = SHARED / "unannotated"
ANNOTATED = SHARED / "annotated"
TADARIDA = SHARED / "tadarida_rsdb" / "RSDB_sample" / "20160822"


# ------------------------------------------------------------------------------------ runs


def _watch_memory(pid: int, peaks: dict, stop: threading.Event) -> None:
    """Peak RSS (MB) of the process and of every descendant, polled."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            for process in [root, *root.children(recursive=True)]:
                try:
                    rss = process.memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    continue
                peaks[process.pid] = max(peaks.get(process.pid, 0.0), rss)
        except psutil.NoSuchProcess:
            return
        time.sleep(0.2)


def run_command(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command; its CPU seconds (it and its descendants, user + sys), wall, peak RSS by pid."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
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
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    driver = peaks.pop(proc.pid, 0.0)
    workers = sorted((mb for mb in peaks.values() if mb > 100), reverse=True)  # not the small helper processes
    return {"cpu": cpu, "wall": wall, "driver_mb": driver, "peak_mb": workers}


def run_detect(source: Path, out: Path, config: tuple[str, ...], extra=()) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.cli", "detect", str(source), "--out", str(out), "-q", *config, *extra]
    result = run_command(cmd)
    report = json.loads((out / "report.json").read_text())
    result["cluster"] = report.get("cluster", "?")
    result["runtime"] = report.get("model", {}).get("runtime", {})
    return result


def audio_seconds(folder: Path) -> float:
    import soundfile as sf

    return sum(sf.info(str(f)).duration for f in folder.rglob("*") if f.suffix.lower() == ".wav")


def real_archive(root: Path, copies: int) -> Path:
    folder = root / f"real-0166-x{copies}"
    if not folder.exists():
        files = sorted(REAL.glob("0166_*.wav"))
        if not files:
            raise SystemExit(f"no 0166_*.wav in {REAL} (see ../shared/data/README.md)")
        for k in range(copies):
            for f in files:
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


CONFIGS = {
    "default (auto)": (),
    "in-process": ("--cluster", "in-process"),
    "local, 1 worker": ("--cluster", "local", "--workers", "1"),
    "local, 2 workers": ("--cluster", "local", "--workers", "2"),
}


def speed(args, extra) -> None:
    archives = {
        "real": [real_archive(args.data, n) for n in args.copies],
        "monitoring": [monitoring_archive(args.data, m) for m in args.minutes],
    }
    print(f"{'archive':>10} {'configuration':>17} {'audio s':>8} {'CPU s':>7} {'wall s':>7} {'marginal':>9} "
          f"{'start-up':>9} {'driver MB':>9} {'MB/worker':>11}  cluster, network")  # fmt: skip
    print(f"{'':>10} {'':>17} {'':>8} {'':>7} {'':>7} {'audio/CPU':>9} {'CPU s':>9}")
    found: dict = {}
    for name, (small, large) in archives.items():
        seconds = [audio_seconds(small), audio_seconds(large)]
        for label, config in CONFIGS.items():
            if (name == "monitoring" and label == "in-process") or label.split(",")[0].split()[0] not in args.configs:
                continue
            runs = [run_detect(folder, args.data / "out" / f"{folder.name}-{label.split()[0]}{k}", config, extra)
                    for k, folder in enumerate((small, large))]  # fmt: skip
            marginal = (seconds[1] - seconds[0]) / max(runs[1]["cpu"] - runs[0]["cpu"], 1e-9)
            if runs[0]["cluster"] != runs[1]["cluster"]:  # auto: two configurations, no marginal cost between them
                marginal = float("nan")
            startup = runs[0]["cpu"] - seconds[0] / marginal
            found[(name, label)] = {"runs": runs, "marginal": marginal, "startup": startup, "seconds": seconds}
            for audio, run in zip(seconds, runs):
                workers = "/".join(f"{m:.0f}" for m in run["peak_mb"][:2]) or "-"
                runtime = run["runtime"]
                network = f"{runtime.get('engine', '?')} {runtime.get('precision', '')}".strip()
                print(f"{name:>10} {label:>17} {audio:8.1f} {run['cpu']:7.1f} {run['wall']:7.1f} "
                      f"{marginal if run is runs[1] else float('nan'):9.1f} {startup if run is runs[0] else float('nan'):9.1f} "
                      f"{run['driver_mb']:9.0f} {workers:>11}  {run['cluster']}, {network}", flush=True)  # fmt: skip
    peer = peer_runs(args, archives["real"]) if args.peer else None
    if set(args.configs) != {"default", "in-process", "local"}:
        return
    print("\nissue 17's table (real 0166 files; CPU = user + sys of the whole command and its workers):")
    default, local2 = found[("real", "default (auto)")], found[("real", "local, 2 workers")]
    # the default command runs the small archive in this process: its start-up beyond the in-process marginal cost
    in_process = found[("real", "in-process")]
    default["startup"] = default["runs"][0]["cpu"] - default["seconds"][0] / in_process["marginal"]
    row = f"{'':<42} {'batml detect (defaults)':>24}" + (f" {'batdetect2 detect':>18}" if peer else "")
    print(row)
    line = f"{'marginal, s of audio per CPU-second':<42} {local2['marginal']:24.1f}"
    print(line + (f" {peer['marginal']:18.1f}" if peer else ""))
    label = f"whole process on {default['seconds'][0]:.0f} s of audio, CPU-s"
    line = f"{label:<42} {default['runs'][0]['cpu']:24.1f}"
    print(line + (f" {peer['runs'][0]['cpu']:18.1f}" if peer else ""))
    if peer:
        print(f"marginal cost ratio batdetect2 / batml: {local2['marginal'] / peer['marginal']:.1f}x (target >= 25x)")
    print(f"start-up of the default command on {default['seconds'][0]:.0f} s of audio: {default['startup']:.1f} CPU-s "
          f"({default['runs'][0]['cluster']}; target <= 5)")  # fmt: skip
    one, two = found[("monitoring", "local, 1 worker")], found[("monitoring", "local, 2 workers")]
    print(f"monitoring archive ({one['seconds'][1] / 60:.0f} min): 2 workers {one['runs'][1]['wall'] / two['runs'][1]['wall']:.2f}x "
          "faster than 1 (wall; target >= 1.8x)")  # fmt: skip


def peer_runs(args, archives) -> dict:
    """batdetect2 on the same real archives; its marginal cost and its runs."""
    seconds = [audio_seconds(a) for a in archives]
    runs = []
    for folder in archives:
        out = args.data / "out" / f"{folder.name}-batdetect2"
        shutil.rmtree(out, ignore_errors=True)
        runs.append(run_command([str(args.peer), "detect", str(folder), str(out), "0.3"]))
    marginal = (seconds[1] - seconds[0]) / max(runs[1]["cpu"] - runs[0]["cpu"], 1e-9)
    for audio, run in zip(seconds, runs):
        print(f"{'real':>10} {'batdetect2':>17} {audio:8.1f} {run['cpu']:7.1f} {run['wall']:7.1f}")
    return {"runs": runs, "marginal": marginal}


# ------------------------------------------------------------------------------------ accuracy


def accuracy_sets(data: Path) -> dict:
    """``{name: (cube, recordings, audio folder, time expansion)}`` of the annotated sets."""
    from pipeline.annotations.dataset import read_dataset
    from pipeline.config import Settings
    from pipeline.distributed import connect
    from pipeline.ingestion import ingest
    from pipeline.io.cube import open_cube
    from pipeline.simulation import simulate_archive

    sim = data / "accuracy-sim"
    if not sim.exists():
        simulate_archive(sim, minutes=data_minutes(), seed=5, test_fraction=0.5)
    sets = {"simulated test split": (sim, read_dataset(sim / "annotations.npz").test, None)}
    if ANNOTATED.is_dir():
        annotated = read_dataset(ANNOTATED / "anns", format="batdetect2")
        sets["annotated real (3 files)"] = (ANNOTATED / "audio", annotated.train + annotated.test, None)
    if TADARIDA.is_dir():
        tadarida = read_dataset(TADARIDA, format="tadarida")  # species, not the model's classes
        detection_only = [dataclasses.replace(r, classes=None) for r in tadarida.train + tadarida.test]
        sets["Tadarida sample (detection)"] = (TADARIDA, detection_only, 10.0)
    out = {}
    with connect("in-process") as client:
        for name, (audio, recordings, expansion) in sets.items():
            cube = data / f"accuracy-{name.split()[0].lower()}.zarr"
            if not cube.exists():
                base = Settings()
                settings = type(base)(spectrogram=base.spectrogram, ingest=base.ingest.replace(time_expansion=expansion))
                ingest(audio, cube, settings=settings, client=client, progress=False)
            out[name] = (open_cube(cube), recordings, audio, expansion)
    return out


def data_minutes() -> float:
    return float(os.environ.get("BATML_BENCH_SIM_MINUTES", "6"))


def accuracy(args, bundle, sets) -> None:
    from pipeline.detection.scorers import WindowScorer
    from pipeline.detection.scoring import Scan
    from pipeline.detection.settings import DetectSettings
    from pipeline.model.accuracy import scorer_accuracy
    from pipeline.model.inference import runtime_graphs

    default = DetectSettings()
    float_graphs = runtime_graphs(bundle, "float")
    if float_graphs is None:
        print("accuracy: this model runs in Keras (no ONNX graphs); skipped")
        return
    networks = {"float": float_graphs.open(1)}
    if bundle.runtime.get("precision") == "int8":
        networks["int8"] = runtime_graphs(bundle, "int8").open(1)
    boosters = bundle.boosters() or None
    paths = {"dense float (every window, boosters everywhere)": ("float", Scan(1, 0.0), 0.0, None)}
    for precision in networks:
        paths[f"fast path, {precision} (default)" if precision == "float" else "fast path, int8"] = (
            precision, default.scan, default.booster_gate, default.booster_margin,
        )  # fmt: skip
    paths["fast path, float, boosters near head peaks (margin 3)"] = ("float", default.scan, default.booster_gate, 3)
    print(f"\naccuracy of {bundle.path} against dense float scoring (detection AP; class mAP; share of the columns "
          "the boosters ran on):")  # fmt: skip
    for name, (cube, recordings, _, _) in sets.items():
        n_calls = sum(len(r.positions) for r in recordings)
        print(f"  {name} ({len(recordings)} recordings, {n_calls} calls):")
        reference = None
        for label, (precision, scan, gate, margin) in paths.items():
            scorer = WindowScorer(networks[precision], boosters, booster_gate=gate, booster_margin=margin)
            counts = [0, 0]
            boost = scorer._boost

            def counting(probs, embedding, use, boost=boost, counts=counts):
                counts[0] += int(np.count_nonzero(use))
                boost(probs, embedding, use)

            scorer._boost = counting

            def score(spec, scorer=scorer, scan=scan, counts=counts):
                counts[1] += len(spec)
                return scorer.score_columns(spec, 0, len(spec), len(spec), scan)

            result = scorer_accuracy(score, cube, recordings, bundle.classes)
            reference = result.detection_ap if reference is None else reference
            share = f"{100 * counts[0] / max(counts[1], 1):5.1f} %" if boosters else "    -"
            has_classes = any(r.classes is not None for r in recordings)
            class_map = f"{result.class_map:.4f}" if has_classes else "     -"
            print(f"    {label:<55} AP {result.detection_ap:.4f} ({result.detection_ap - reference:+.4f})  "
                  f"mAP {class_map}  boosters {share}", flush=True)  # fmt: skip


# ------------------------------------------------------------------------------------ export


def export_figures(args, bundle, sets) -> None:
    from pipeline.detection.settings import DetectSettings
    from pipeline.evaluation.metrics import detection_average_precision
    from pipeline.evaluation.recordings import calls_table
    from pipeline.model.accuracy import scorer_accuracy
    from pipeline.model.device import export_device
    from pipeline.model.inference import runtime_graphs

    print(f"\ndevice export of {bundle.path} (batml export; the runner: numpy + onnxruntime, one thread):")
    everything = DetectSettings(thresholds={"detection": 0.0})  # every event, for the AP
    calibration = args.data / "accuracy-sim"
    exports = {"float": export_device(bundle.path, args.data / "export-float", detect_settings=everything)}
    int8 = bundle.runtime.get("precision") == "int8"
    exports["int8"] = export_device(
        bundle.path, args.data / "export-int8", int8=True, calibration=None if int8 else calibration,
        detect_settings=everything,
    )  # fmt: skip
    small, large = (real_archive(args.data, n) for n in args.copies)
    seconds = [audio_seconds(small), audio_seconds(large)]
    from pipeline.annotations.matching import match_recordings
    from pipeline.detection.scorers import model_scorer

    scorer = model_scorer(bundle, graphs=runtime_graphs(bundle, "float"), booster_gate=DetectSettings().booster_gate)
    references = {
        name: scorer_accuracy(lambda s: scorer.score_columns(s, 0, len(s), len(s), DetectSettings().scan), cube,
                              recordings, bundle.classes).detection_ap
        for name, (cube, recordings, _, _) in sets.items()
    }  # fmt: skip
    for precision, export in exports.items():
        runs = [
            run_command([sys.executable, str(export.folder / "runner.py"), *map(str, sorted(folder.rglob("*.wav"))),
                         "-o", str(args.data / f"runner-{precision}.csv"), "--threads", "1"],
                        env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
            for folder in (small, large)
        ]
        marginal = (seconds[1] - seconds[0]) / max(runs[1]["cpu"] - runs[0]["cpu"], 1e-9)
        origin = "the bundle's graphs" if precision == "float" or int8 else "quantized here, calibrated on the simulated archive"
        print(f"  {precision}: {export.size_bytes / 1e6:.2f} MB of model files ({origin}); runner on the real 0166 files, "
              f"one core: {marginal:.1f} s of audio per CPU-second (marginal), {runs[0]['cpu']:.1f} CPU-s for "
              f"{seconds[0]:.0f} s of audio (start-up included), peak {runs[1]['driver_mb']:.0f} MB")  # fmt: skip
        for name, (cube, recordings, audio, expansion) in sets.items():
            paths = cube.batml.recordings["path"]
            indices, _ = match_recordings(cube, [r.file for r in recordings])
            wanted = {str(paths.iat[r]): str(r) for r in indices if r is not None}
            out = args.data / f"runner-{precision}-{name.split()[0].lower()}.csv"
            options = ["--time-expansion", str(expansion)] if expansion else []
            run_command([sys.executable, str(export.folder / "runner.py"), *wanted, "-o", str(out), *options])
            events = pd.read_csv(out)
            detections = pd.DataFrame({"recording": events["file"].astype(str).map(wanted), "time": events["time"],
                                       "score": events["score"]})  # fmt: skip
            ap = detection_average_precision(calls_table(recordings, cube), detections).average_precision
            reference = references[name]
            print(f"    {name:<32} runner AP {ap:.4f}, batml's float model {reference:.4f} ({ap - reference:+.4f})",
                  flush=True)  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model bundle (default: the bundled one)")
    parser.add_argument("--peer", type=Path, help="batdetect2's command, installed in its own environment")
    parser.add_argument("--sections", nargs="+", default=["speed", "accuracy", "export"],
                        choices=["speed", "accuracy", "export"])  # fmt: skip
    parser.add_argument("--copies", type=int, nargs=2, default=(1, 8), help="copies of the 0166 files: small, large")
    parser.add_argument("--minutes", type=float, nargs=2, default=(2.0, 26.0), help="monitoring archive: small, large")
    parser.add_argument("--configs", nargs="+", default=["default", "in-process", "local"],
                        choices=["default", "in-process", "local"], help="configurations of the speed section")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "batml-detect-bench")
    args = parser.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    extra = ("--model", str(args.model)) if args.model else ()
    if "speed" in args.sections:
        speed(args, extra)
    if {"accuracy", "export"} & set(args.sections):
        from pipeline.model.bundle import DEFAULT_BUNDLE, load_bundle

        bundle = load_bundle(args.model or DEFAULT_BUNDLE)
        sets = accuracy_sets(args.data)
        if "accuracy" in args.sections:
            accuracy(args, bundle, sets)
        if "export" in args.sections:
            export_figures(args, bundle, sets)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
