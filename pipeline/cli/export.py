"""``batml export``: a model in forms a recorder-class device runs, with a reference runner."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import EXIT_OK


def run(args) -> int:
    from pipeline.model.device import export_device

    export = export_device(
        args.model, args.to, format=args.format, int8=args.int8, calibration=args.calibration
    )
    print(export.summary())
    return EXIT_OK


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml export`` to the subcommands."""
    p = sub.add_parser(
        parents=[common],
        name="export",
        help="export a model for a recorder-class device (ONNX network, boosters as arrays, a reference runner)",
        description="Write a model bundle in forms a recorder-class device runs: model.json (spectrogram settings, "
        "classes, thresholds, detection settings), the network as ONNX graphs (int8 with --int8), a hybrid's "
        "XGBoost trees as flat numpy arrays (boosters.npz, no pickle), runner.py (a reference runner that needs "
        "only numpy and onnxruntime, no TensorFlow, Dask or batml, and reproduces batml detect's events on the "
        "same audio) and README.txt with the model's terms of use. Only ONNX is written: LiteRT files would come "
        "from TensorFlow's converter, whose int8 network differs from the graphs batml detects with, so its "
        "events could not be batml's; ONNX Runtime runs on ARM and x86 Linux recorders. On the device: "
        "python DIR/runner.py RECORDING.wav -o calls.csv.",
        epilog="Examples:\n  batml export models/hybrid --to device/hybrid\n"
        "  batml export models/hybrid --to device/hybrid-int8 --int8\n"
        "  batml export --to device/default-int8 --int8 --calibration /data/night   # the bundled model",
    )
    p.add_argument("model", nargs="?", type=Path, metavar="MODEL_DIR", help="model bundle (default: the bundled model)")
    p.add_argument("--to", required=True, type=Path, metavar="DIR", help="the export folder (an earlier export is replaced)")
    p.add_argument("--format", choices=("onnx", "litert"), default="onnx", help="the network's format (onnx; see above)")
    p.add_argument(
        "--int8", action="store_true",
        help="the int8 network: the bundle's (kept by training where it keeps the detection AP), else quantized here "
        "with --calibration",
    )  # fmt: skip
    p.add_argument(
        "--calibration", type=Path, metavar="AUDIO_DIR|CUBE",
        help="recordings (or a cube) whose spectrograms calibrate the int8 quantization of a bundle without int8 graphs",
    )  # fmt: skip
    p.set_defaults(func=run)
