"""Model benchmark: the six models on one simulated archive, held-out test split.

For each model it trains with ``batml train``'s code (default settings unless capped), then
prints: detection AP, mAP, multi-label micro F1 over all matched calls and over overlapping
calls only, training wall time, bundle size, and inference CPU-seconds per second of audio
(the dense per-column path over the test recordings, in this process).

Targets of issue 3 (not asserted): hybrid_cnn_xgboost with the default settings reaches
detection AP >= 0.95 and mAP >= 0.90 on a 20-minute archive, trained in under 30 minutes on
2 CPU cores.

Usage::

    python benchmarks/models.py --minutes 20 --models hybrid_cnn_xgboost cnn8 --workers 2
    python benchmarks/models.py --minutes 1 --epochs 1      # a quick smoke run of all six
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def inference_cost(model: Path, annotations, cube_path: Path) -> float:
    """CPU-seconds per second of audio of the dense detection of the test recordings."""
    from pipeline.evaluation.recordings import detect_recordings
    from pipeline.io.cube import open_cube
    from pipeline.model.bundle import load_bundle
    from pipeline.model.predictor import Predictor

    bundle = load_bundle(model)
    predictor = Predictor.from_bundle(bundle)
    cube = open_cube(cube_path)
    seconds = sum(r.duration for r in annotations.test)
    t0 = time.process_time()
    detect_recordings(predictor, cube, annotations.test, bundle.classes)
    return (time.process_time() - t0) / seconds


def main() -> None:
    from distributed import Client, LocalCluster

    from pipeline.annotations.dataset import read_dataset
    from pipeline.ingestion import ingest
    from pipeline.model.registry import ARCHITECTURE_NAMES
    from pipeline.simulation import simulate_archive
    from pipeline.training.job import TrainSettings, train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURE_NAMES), choices=ARCHITECTURE_NAMES)
    parser.add_argument("--epochs", type=int, help="cap on epochs (default: the CSV's, with early stopping)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path("/tmp/batml-models-bench"))
    args = parser.parse_args()

    root = args.data / f"sim-{args.minutes:g}min-seed{args.seed}"
    if not (root / "annotations.npz").exists():
        simulate_archive(root, minutes=args.minutes, seed=args.seed, progress=True)
    annotations = read_dataset(root / "annotations.npz")
    cube = args.data / f"cube-{args.minutes:g}min-seed{args.seed}.zarr"
    print(f"{'model':<22} {'det AP':>6} {'mAP':>6} {'ML F1':>6} {'ML F1 ovl':>9} {'train min':>9} "
          f"{'size MB':>7} {'infer CPU s/s':>13}", flush=True)  # fmt: skip
    with LocalCluster(n_workers=args.workers, threads_per_worker=1) as cluster, Client(cluster) as client:
        t0 = time.perf_counter()
        ingest(root, cube, client=client, progress=False)  # the cube is shared: not in training times
        print(f"(cube ready in {time.perf_counter() - t0:.0f} s)", flush=True)
        for name in args.models:
            out = args.data / f"model-{name}"
            t0 = time.perf_counter()
            report = train(
                root / "annotations.npz", root, out, cube=cube, client=client, progress=False,
                settings=TrainSettings(model_type=name, epochs=args.epochs, seed=args.seed),
            )  # fmt: skip
            minutes = (time.perf_counter() - t0) / 60
            m = report.metrics
            ml = m["multilabel"]
            print(
                f"{name:<22} {m['detection']['ap'] or 0:6.3f} {m['classification']['map'] or 0:6.3f} "
                f"{ml['all']['micro_f1'] or 0:6.3f} {ml['overlapping']['micro_f1'] or 0:9.3f} {minutes:9.1f} "
                f"{_bytes(out) / 1e6:7.1f} {inference_cost(out, annotations, cube):13.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
