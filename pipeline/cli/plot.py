"""``batml plot``: draw a figure of a run's results."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from pipeline.cli.options import (
    EXIT_ERROR, EXIT_OK, EXIT_USAGE, HelpFormatter, add_annotation_options, add_audio_options, add_cluster_options,
    dataset_options, print_notes, print_skipped, settings_of,
)

IMAGE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def _image_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower().lstrip(".") not in IMAGE_FORMATS:
        raise argparse.ArgumentTypeError(f"{text!r}: the file name must end with .{', .'.join(IMAGE_FORMATS)}")
    return path


class PlotUsageError(Exception):
    """A 'batml plot' command line that argparse cannot check alone (exit status 2)."""


def _read_calls(args, classes: list[str], split: str):
    """Annotated calls (``file, position, class``; classes numbered as ``classes``, 0 for one the
    detections lack) of any annotation format, one split or all."""
    import pandas as pd

    from pipeline.annotations.dataset import read_dataset

    dataset = read_dataset(args.calls, trust_npz=args.trust_npz, **dataset_options(args)).recoded(classes)
    print_notes(dataset.notes)
    recordings = {"train": dataset.train, "test": dataset.test, "all": dataset.train + dataset.test}[split]
    rows = [(rec.file, float(p), int(c)) for rec in recordings for p, c in zip(rec.positions, rec.classes)]
    return pd.DataFrame(rows, columns=["file", "position", "class"])


def _model_scored_calls(args):
    """Run a model bundle on the annotated recordings (as 'batml evaluate' does): (calls, detections, classes)."""
    from pipeline.evaluation.recordings import calls_table, detect_recordings
    from pipeline.evaluation.run import model_on_annotations
    from pipeline.model.predictor import Predictor

    bundle, cube, recordings, problems, notes = model_on_annotations(
        args.model, args.dataset, args.audio, split=args.split, cube=args.cube, trust_npz=args.trust_npz,
        dataset_options=dataset_options(args), ingest_settings=settings_of(args).ingest, cluster=args.cluster,
        n_workers=args.workers,
        progress=not args.quiet,
    )  # fmt: skip
    print_notes(notes)
    print_skipped(problems)
    predictor = Predictor.from_bundle(bundle)
    detections = detect_recordings(predictor, cube, recordings, bundle.classes, calibration=bundle.calibration)
    return calls_table(recordings, cube), detections, bundle.classes


def _scored_calls(args):
    """(calls, detections, classes) for 'plot pr' and 'plot confusion', from a run's outputs or a model."""
    from pipeline.outputs.parts import read_detections

    args.split = args.split or ("test" if args.model is not None else "all")
    if args.model is not None:
        if args.calls or args.detections:
            raise PlotUsageError("give MODEL_DIR DATASET --audio AUDIO_DIR, or --calls and --detections, not both")
        if args.dataset is None or args.audio is None:
            raise PlotUsageError("MODEL_DIR needs DATASET and --audio AUDIO_DIR")
        return _model_scored_calls(args)
    if not (args.calls and args.detections):
        raise PlotUsageError("give --calls DATASET and --detections OUT_DIR (or MODEL_DIR DATASET --audio AUDIO_DIR)")
    from pipeline.outputs.parts import detection_classes

    detections = read_detections(args.detections)
    classes = detection_classes(args.detections) or []
    return _read_calls(args, classes, args.split), detections, classes or None


def run(args) -> int:
    if importlib.util.find_spec("matplotlib") is None:
        print("batml: error: 'batml plot' needs matplotlib: pip install 'batml[plot]'", file=sys.stderr)
        return EXIT_ERROR
    from pipeline import plot

    try:
        if args.kind == "spectrogram":
            recording = int(args.recording) if args.recording.isdigit() else args.recording
            figure = plot.spectrogram(
                args.cube, recording, args.start, args.end, channel=args.channel, detections=args.detections,
                min_probability=args.min_probability, model=args.model,
            )  # fmt: skip
        elif args.kind == "activity":
            figure = plot.activity(
                args.detections, by=args.by, min_probability=args.min_probability, timestamps=args.cube
            )
        else:
            calls, detections, classes = _scored_calls(args)
            draw = plot.precision_recall if args.kind == "pr" else plot.confusion
            figure = draw(calls, detections, classes, tolerance=args.tolerance)
    except PlotUsageError as exc:
        print(f"batml plot {args.kind}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    plot.save_figure(figure, args.out, dpi=args.dpi)
    print(f"{args.kind} -> {args.out}")
    return EXIT_OK


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml plot`` to the subcommands."""
    p = sub.add_parser(
        parents=[common],
        name="plot",
        help="draw a figure of a run's results: spectrogram, activity, precision-recall (pr), confusion",
        description="Draw one figure to an image file (.png, .pdf, .svg). KIND is 'spectrogram' (part of a "
        "recording from a cube, its detected calls boxed, and a model's probabilities), 'activity' (calls "
        "per species per hour of night or per site), 'pr' (precision-recall curves of the detection and of "
        "every species, against annotated calls) or 'confusion' (annotated species against detected "
        "species, with the missed calls). 'batml plot KIND --help' explains each. The same figures come "
        "from Python: pipeline.plot.",
        epilog="Examples:\n"
        "  batml plot spectrogram results/night/cube.zarr site01/20260612_213015.wav --start 1 --end 2.5 --detections results/night -o calls.png\n"
        "  batml plot activity results/night --by hour --cube results/night/cube.zarr -o activity.png\n"
        "  batml plot pr --calls sim/annotations.csv --detections results/sim -o pr.png\n"
        "  batml plot confusion models/hybrid sim/annotations.npz --audio sim -o confusion.png",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True, help="the figure to draw")
    p.set_defaults(func=run)

    def add_kind(name: str, help: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
        k = kinds.add_parser(
            name, parents=[common], help=help, description=description, formatter_class=HelpFormatter,
            epilog="Examples:\n" + "\n".join(f"  batml plot {name} {line}" for line in examples),
        )  # fmt: skip
        k.add_argument("--out", "-o", type=_image_path, required=True, metavar="FILE.png", help="image to write (.png, .pdf, .svg, .jpg)")
        k.add_argument("--dpi", type=int, default=100, help="pixels per inch of a .png/.jpg (default 100)")
        return k

    k = add_kind(
        "spectrogram", "a recording's spectrogram with its detected calls (and a model's probabilities)",
        "Draw the spectrogram of a time range of one recording of a cube (only that range is read), "
        "each detected call of the run boxed and labelled with its species and probability, and with "
        "--model a panel of the model's probability of a call and of each species for every window.",
        ["results/night/cube.zarr site01/20260612_213015.wav --start 1 --end 2.5 --detections results/night -o calls.png",
         "results/night/cube.zarr 3 --model pipeline/model/default -o probabilities.png"],
    )  # fmt: skip
    k.add_argument("cube", type=Path, metavar="CUBE", help="a spectrogram cube (e.g. OUT_DIR/cube.zarr of 'batml detect')")
    k.add_argument("recording", metavar="RECORDING", help="the recording: its path, the end of its path, or its index")
    k.add_argument("--start", type=float, metavar="S", help="start of the range (s; default 0)")
    k.add_argument("--end", type=float, metavar="S", help="end of the range (s; default the end of the recording)")
    k.add_argument("--channel", type=int, metavar="N", help="channel of a multichannel file (-1: their mix)")
    k.add_argument("--detections", type=Path, metavar="OUT_DIR", help="output folder of 'batml detect': box its calls")
    k.add_argument("--min-probability", type=float, default=0.5, metavar="P", help="box calls whose probability reaches P (0.5)")
    k.add_argument("--model", type=Path, metavar="MODEL_DIR", help="model bundle whose probabilities to draw under the spectrogram")

    k = add_kind(
        "activity", "calls per species per hour of night or per site",
        "Draw the detected calls per species, stacked, per hour of night (from each recording's start: "
        "its GUANO time stamp in the cube's manifest with --cube, else YYYYMMDD_HHMMSS in its name) or "
        "per site (the first folder of the path below the folder all recordings share). A call counts "
        "for every species whose probability reaches --min-probability.",
        ["results/night --cube results/night/cube.zarr -o activity.png", "results/night --by site --min-probability 0.8 -o sites.png"],
    )  # fmt: skip
    k.add_argument("detections", type=Path, metavar="OUT_DIR", help="output folder of 'batml detect'")
    k.add_argument("--by", choices=("hour", "site"), default="hour", help="bars per hour of night (default) or per site")
    k.add_argument("--cube", type=Path, metavar="CUBE", help="cube whose manifest has the recordings' time stamps")
    k.add_argument("--min-probability", type=float, default=0.5, metavar="P", help="count a species where its probability reaches P (0.5)")

    for name, help, what in (
        ("pr", "precision-recall curves of the detection and of each species",
         "Draw the precision-recall curves of the detection (whatever the species) and of every species "
         "with annotated calls, their average precision (AP) in the legend, as 'batml evaluate' computes them"),
        ("confusion", "annotated species against detected species, with the missed calls",
         "Draw a heat map of the annotated calls: their species against the most probable species of the "
         "detection that found them (calls matched within --tolerance), or 'missed'"),
    ):  # fmt: skip
        k = add_kind(
            name, help,
            what + ". Either from a detection run (--calls DATASET --detections OUT_DIR; every annotated "
            "recording is taken to be in the run) or by running a model on the annotated recordings "
            "(MODEL_DIR DATASET --audio AUDIO_DIR, as 'batml evaluate': the test split by default).",
            [f"--calls sim/annotations.csv --detections results/sim -o {name}.png",
             f"models/hybrid sim/annotations.npz --audio sim --split test -o {name}.png"],
        )  # fmt: skip
        k.add_argument("model", type=Path, nargs="?", metavar="MODEL_DIR", help="a model bundle to run on the annotated recordings")
        k.add_argument("dataset", nargs="?", metavar="DATASET", help="with MODEL_DIR: the annotations (reference-system .npz or CSV of calls)")
        k.add_argument("--audio", metavar="AUDIO_DIR", help="with MODEL_DIR: folder of the annotated recordings")
        k.add_argument("--cube", type=Path, metavar="CUBE.zarr", help="with MODEL_DIR: spectrogram cube to reuse")
        k.add_argument("--calls", metavar="DATASET", help="annotated calls: a reference-system .npz or a CSV of calls")
        k.add_argument("--detections", type=Path, metavar="OUT_DIR", help="output folder of 'batml detect' on those recordings")
        k.add_argument(
            "--split", choices=("train", "test", "all"), default=None,
            help="annotated calls to use (default: all with --calls, the test split with MODEL_DIR)",
        )  # fmt: skip
        k.add_argument("--tolerance", type=float, default=0.010, metavar="S", help="matching tolerance (s; default 0.010)")
        add_annotation_options(k)
        add_audio_options(k)
        add_cluster_options(k)
