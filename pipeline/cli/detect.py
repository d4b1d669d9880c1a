"""``batml detect``: detect the calls of an archive."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli.options import add_audio_options, add_cluster_options, exit_status, settings_of


def _threshold(text: str) -> tuple[str, float]:
    """``0.7`` (the detection threshold) or ``CLASS=0.7``."""
    key, sep, value = text.rpartition("=")
    key = key if sep else "detection"
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a threshold (0.7, or CLASS=0.7)") from None


def _formats(text: str) -> tuple[str, ...]:
    from pipeline.detection.settings import FORMATS

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: formats are a comma-separated list of {', '.join(FORMATS)}")
    return names


def run(args) -> int:
    from pipeline.detection.archive import detect_archive
    from pipeline.detection.settings import DetectSettings

    fast = {k: v for k, v in (("scan_stride", args.scan_stride), ("scan_gamma", args.scan_gamma),
                               ("booster_gate", args.booster_gate)) if v is not None}  # fmt: skip
    if args.booster_margin is not None:
        fast["booster_margin"] = None if args.booster_margin < 0 else args.booster_margin
    precision = args.precision
    if args.dense:
        fast = dict(scan_stride=1, scan_gamma=0.0, booster_gate=0.0, booster_margin=None)
        precision = "float" if precision == "auto" else precision
    settings = DetectSettings(
        thresholds=dict(args.threshold or []) or None,
        formats=args.format,
        raven_per_recording=args.raven == "per-recording",
        precision=precision,
        engine=args.engine,
        **fast,
    )
    report = detect_archive(
        args.source, args.out, model=args.model, cube=args.cube, settings=settings,
        ingest_settings=settings_of(args), cluster=args.cluster, n_workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    print(report.summary())
    if not report.complete:
        print("some chunks were not detected: run the same command again to finish", file=sys.stderr)
    return exit_status(report)


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml detect`` to the subcommands."""
    p = sub.add_parser(
        parents=[common],
        name="detect",
        help="detect bat calls and their species in an archive of recordings (or a cube)",
        description="Build (or reuse) the spectrogram cube of the recordings, run the model over it on a Dask "
        "cluster and write every detected call with its species probabilities: OUT_DIR/detections.parquet "
        "(one row per call), the reference system's CSV (detections.csv: one row per call and species above its "
        "threshold), Raven Pro selection tables (OUT_DIR/raven/) and a run report (report.json, report.txt). "
        "Run the same command again after a crash or Ctrl-C: finished chunks are kept.\n"
        "The network runs on ONNX Runtime (no TensorFlow in the workers) for the cnn8 and hybrid_cnn_xgboost "
        "models, in int8 when the model was trained with a check that int8 keeps its detection AP; other models "
        "run in Keras. By default (--cluster auto) an input of at most one cube chunk (about 76 s of audio) runs "
        "in this process, without starting worker processes (cheaper for a few files); a larger one starts a "
        "local Dask cluster.",
        epilog="Examples:\n  batml detect /data/night-2026-06-12 --out results/night-2026-06-12\n"
        "  batml detect /data/site01 --out results/site01 --model models/hybrid --threshold 0.8 --threshold Myosp=0.6\n"
        "  batml detect /data/site01 --out results/site01 --cluster slurm --cluster-config cluster/slurm.yaml",
    )
    p.add_argument("source", metavar="AUDIO_DIR|CUBE", help="folder of WAV recordings (searched recursively), fsspec URL, or a cube")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="output folder (the same folder resumes the run)")
    p.add_argument("--model", type=Path, metavar="MODEL_DIR", help="model bundle (default: the bundled hybrid_cnn_xgboost)")
    p.add_argument("--cube", type=Path, metavar="CUBE.zarr", help="where to build the cube (default: OUT_DIR/cube.zarr)")
    p.add_argument(
        "--format", type=_formats, default=("parquet", "csv", "raven"), metavar="LIST",
        help="outputs besides the Parquet table: parquet,csv,raven (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--threshold", type=_threshold, action="append", metavar="[CLASS=]P",
        help="override a tuned threshold: P for detection (every call whose calibrated score reaches P is kept; "
        "e.g. 0.01 to review doubtful calls), CLASS=P for a class's probability (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--raven", choices=("per-recording", "combined"), default="per-recording",
        help="one Raven table per recording (default) or one combined table",
    )  # fmt: skip
    p.add_argument(
        "--dense", action="store_true",
        help="score every window with the whole model, in float (the slow reference; default: the coarse-to-fine "
        "fast path)",
    )  # fmt: skip
    fast = p.add_argument_group("fast path (advanced; benchmarks/detect_speed.py measures them)")
    fast.add_argument("--scan-stride", type=int, metavar="S", help="score every S-th window first (default 4; 1: every window)")
    fast.add_argument(
        "--scan-gamma", type=float, metavar="G",
        help="then every window within S-1 columns of a first-pass window whose call score reaches G (default 0.02)",
    )  # fmt: skip
    fast.add_argument(
        "--booster-gate", type=float, metavar="G",
        help="hybrids: run the boosters only where the network's own call score reaches G (default 0.01; 0: everywhere)",
    )  # fmt: skip
    fast.add_argument(
        "--booster-margin", type=int, metavar="M",
        help="hybrids: ... and only within M columns of a peak of that call score (default: off, -1; fewer booster "
        "runs on dense passes, but the AP moves by up to 0.06 on real sets)",
    )  # fmt: skip
    fast.add_argument(
        "--precision", choices=("auto", "float", "int8"), default="auto",
        help="the network's precision: the model's own choice (default: int8 when training found that it keeps the "
        "detection AP, else float), or forced",
    )  # fmt: skip
    fast.add_argument(
        "--engine", choices=("onnxruntime", "keras"), default="onnxruntime",
        help="where a cnn8/hybrid network runs: ONNX Runtime (default) or Keras (the same scan; slower, for comparisons)",
    )  # fmt: skip
    add_audio_options(p)
    add_cluster_options(p, auto=True)
    p.set_defaults(func=run)

