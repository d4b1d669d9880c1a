"""The ``batml`` command: one entry point, one subcommand per job.

The CLI only parses options, calls the Python API and prints; everything it does can be
done from Python too. Exit status: 0 success; 1 error (nothing or not everything done, the
message says why); 2 bad command line; 3 done, but some files or recordings were rejected or
failed (listed in the output); 130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from pipeline._version import __version__
from pipeline.interrupt import interruptible

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _settings(args):
    from pipeline.config import Settings

    settings = Settings.load(args.config)
    ingest = settings.ingest.replace(
        channels=getattr(args, "channels", None), time_expansion=getattr(args, "time_expansion", None)
    )
    return type(settings)(spectrogram=settings.spectrogram, ingest=ingest)


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument(
        "--cluster",
        default="local",
        metavar="local|slurm|ADDRESS",
        help="where to run: a local Dask cluster (default), SLURM jobs (dask-jobqueue), "
        "or the address of a running scheduler (tcp://host:8786)",
    )
    g.add_argument("--workers", type=int, metavar="N", help="workers to start (default: one per CPU core)")

    class LoadClusterConfig(argparse.Action):
        """Merge the YAML into dask.config while parsing: a bad file is a bad command line."""

        def __call__(self, parser, namespace, values, option_string=None):
            from pipeline.distributed import ClusterError, load_cluster_config

            try:
                load_cluster_config(values)
            except ClusterError as exc:
                parser.exit(EXIT_USAGE, f"batml: error: {exc}\n")
            setattr(namespace, self.dest, values)

    g.add_argument(
        "--cluster-config",
        type=Path,
        action=LoadClusterConfig,
        metavar="FILE.yaml",
        help="cluster profile merged over batml's defaults (e.g. batml: slurm: cluster: queue: ...; "
        "see cluster/slurm.yaml)",
    )


def _add_audio_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recordings")
    g.add_argument(
        "--time-expansion",
        type=float,
        metavar="X",
        help="time-expansion factor of every file (overrides GUANO's TE; default: GUANO's, else 1)",
    )
    g.add_argument(
        "--channels",
        choices=("each", "first", "mix"),
        help="multichannel files: analyse each channel (default), the first only, or their mean",
    )


def _add_dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="annotations: the seed's .npz or a CSV of calls")
    p.add_argument("--audio", required=True, metavar="AUDIO_DIR", help="folder of the annotated recordings")
    p.add_argument("--trust-npz", action="store_true", help="allow pickle in the .npz (only for files you trust)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from pipeline.model.registry import ARCHITECTURE_NAMES

    p.add_argument(
        "--model-type", default="hybrid_cnn_xgboost", choices=ARCHITECTURE_NAMES,
        help="which model (default: hybrid_cnn_xgboost, the proposed one)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, metavar="N", help="cap on training epochs (default: the CSV's, with early stopping)")
    p.add_argument("--params", metavar="CSV", help="network hyperparameters (rows cnn_8, cnn_2, ...; default: packaged)")
    p.add_argument("--xgboost-params", metavar="CSV", help="XGBoost hyperparameters (row xgboost_spectrogram)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def cmd_simulate(args) -> int:
    from pipeline.simulate import simulate_archive

    archive = simulate_archive(
        args.out_dir,
        minutes=args.minutes,
        seed=args.seed,
        empty_fraction=args.empty_fraction,
        overlap_fraction=args.overlap_fraction,
        time_expanded_fraction=args.time_expanded_fraction,
        progress=not args.quiet,
    )
    print(
        f"{len(archive.files)} recordings, {archive.duration_s / 60:.1f} min, {archive.n_calls} calls "
        f"-> {archive.root}\nannotations: {archive.annotations_npz}, {archive.annotations_csv}"
    )
    return EXIT_OK


def cmd_manifest(args) -> int:
    from pipeline.io import archive

    settings = _settings(args)
    paths = archive.discover(args.audio)
    manifest = archive.build_manifest(
        paths, time_expansion=settings.ingest.time_expansion, settings=settings.spectrogram, progress=not args.quiet
    )
    archive.write_manifest(manifest, args.out)
    bad = manifest[manifest["status"] != "ok"]
    print(f"{len(manifest)} files, {len(bad)} rejected -> {args.out}")
    for path, reason in zip(bad["path"], bad["reason"]):
        print(f"rejected: {path}: {reason}")
    return EXIT_SOME_FAILED if len(bad) else EXIT_OK


# --- convert: reference weights (.npy) to a model bundle (pipeline.model.reference) ---------


def _convert_reference(args) -> int:
    from pipeline.model import reference

    hybrid = args.model_type == "hybrid_cnn_xgboost"
    if hybrid and (args.dataset is None or args.audio is None):
        raise reference.ReferenceModelError(
            f"{args.source}: a hybrid_cnn_xgboost bundle trains its boosters on annotated recordings: "
            "give both --dataset DATASET and --audio AUDIO_DIR"
        )
    if not hybrid and (args.dataset is not None or args.audio is not None):
        raise reference.ReferenceModelError(
            f"{args.source}: --dataset and --audio train the boosters of --model-type hybrid_cnn_xgboost only"
        )
    if hybrid:
        report = reference.hybrid_bundle(
            args.source, args.dataset, args.audio, args.out, thresholds_path=args.thresholds,
            ingest_settings=_settings(args).ingest, xgboost_csv=args.xgboost_params, seed=args.seed,
            trust_npz=args.trust_npz, cluster=args.cluster, n_workers=args.workers, progress=not args.quiet,
        )  # fmt: skip
        print(report.summary())
    else:
        reference.network_bundle(args.source, args.out, thresholds_path=args.thresholds, model_type=args.model_type)
        print(f"{args.source} -> {args.out}")
    print(f"licence: {reference.REFERENCE_LICENCE} (weights from {reference.REFERENCE_REPOSITORY}); it applies to this model")
    return EXIT_OK


# ------------------------------------------------------------------------------------------


def cmd_convert(args) -> int:
    from pipeline.io import annotations

    source = Path(args.source)
    if source.suffix.lower() == ".npy":
        return _convert_reference(args)
    if source.is_dir():
        calls, problems = annotations.read_batdetect2(source)
    elif source.suffix.lower() == ".npz":
        calls, problems = annotations.seed_npz_to_calls(annotations.read_seed_npz(source, trust=args.trust_npz)), []
    else:
        raise annotations.AnnotationError(f"{source}: expected a folder of batdetect2 .json files or a seed .npz")
    annotations.write_calls_csv(args.out, calls)
    print(f"{len(calls)} calls in {calls['file'].nunique()} recordings -> {args.out}")
    for line in problems:
        print(f"skipped: {line}")
    return EXIT_SOME_FAILED if problems else EXIT_OK


def cmd_ingest(args) -> int:
    from pipeline.ingest import ingest

    report = ingest(
        args.audio,
        args.cube,
        settings=_settings(args),
        cluster=args.cluster,
        n_workers=args.workers,
        progress=not args.quiet,
    )
    print(report.summary())
    if not report.complete:
        return EXIT_ERROR
    return EXIT_OK if report.ok else EXIT_SOME_FAILED


def cmd_train(args) -> int:
    from pipeline.train import TrainSettings, train

    settings = TrainSettings(
        model_type=args.model_type,
        hnm_rounds=args.hnm,
        seed=args.seed,
        epochs=args.epochs,
        networks_csv=args.params,
        xgboost_csv=args.xgboost_params,
    )
    report = train(
        args.dataset,
        args.audio,
        args.out,
        settings=settings,
        cube=args.cube,
        run_settings=_settings(args),
        trust_npz=args.trust_npz,
        cluster=args.cluster,
        n_workers=args.workers,
        progress=not args.quiet,
    )
    print(report.summary())
    return EXIT_SOME_FAILED if report.problems else EXIT_OK


def cmd_tune(args) -> int:
    from pipeline.tune import TuneSettings, TuningError, parse_budget, tune_model

    try:
        budget = parse_budget(args.budget)
    except ValueError as exc:
        raise TuningError(str(exc)) from None
    settings = TuneSettings(
        model_type=args.model_type,
        budget_s=budget,
        max_trials=args.max_trials,
        seed=args.seed,
        stage=args.stage,
        epochs=args.epochs,
        networks_csv=args.params,
        xgboost_csv=args.xgboost_params,
    )
    result = tune_model(
        args.dataset, args.audio, args.out, settings, cube=args.cube, run_settings=_settings(args),
        trust_npz=args.trust_npz, cluster=args.cluster, n_workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    print(
        f"{result.n_trials} trials ({result.n_failed} failed) in {result.elapsed_s / 60:.1f} min; "
        f"best loss {result.best_loss:.4f} (1 - held-out detection AP) at trial {result.best_tid}\n"
        f"best parameters: {args.out}/best_networks.csv"
        + (f", {args.out}/best_xgboost.csv" if settings.stage != "network" else "")
        + f"\ntrials: {args.out}/trials.json (run the same command again to continue)"
    )
    return EXIT_OK


def cmd_evaluate(args) -> int:
    from pipeline.train import evaluate_saved_model

    result = evaluate_saved_model(
        args.model, args.dataset, args.audio, cube=args.cube, trust_npz=args.trust_npz,
        cluster=args.cluster, n_workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    if args.json:
        import json

        print(json.dumps(result, allow_nan=False))
    else:
        from pipeline.evaluate import format_report

        print(format_report(result))
    _print_skipped(result["skipped"])
    return EXIT_SOME_FAILED if result["skipped"] else EXIT_OK


def _print_skipped(problems: list[str]) -> None:
    """The annotated recordings a model was not run on, one line each, on stderr."""
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)


def _threshold(text: str) -> tuple[str, float]:
    """``0.7`` (the detection threshold) or ``CLASS=0.7``."""
    key, sep, value = text.rpartition("=")
    key = key if sep else "detection"
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a threshold (0.7, or CLASS=0.7)") from None


def _formats(text: str) -> tuple[str, ...]:
    from pipeline.detect_archive import FORMATS

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: formats are a comma-separated list of {', '.join(FORMATS)}")
    return names


def cmd_detect(args) -> int:
    from pipeline.detect_archive import DetectSettings, detect_archive

    fast = {k: v for k, v in (("scan_stride", args.scan_stride), ("scan_gamma", args.scan_gamma),
                               ("booster_gate", args.booster_gate)) if v is not None}  # fmt: skip
    if args.dense:
        fast = dict(scan_stride=1, scan_gamma=0.0, booster_gate=0.0)
    settings = DetectSettings(
        thresholds=dict(args.threshold or []) or None,
        formats=args.format,
        raven_per_recording=args.raven == "per-recording",
        **fast,
    )
    report = detect_archive(
        args.source, args.out, model=args.model, cube=args.cube, settings=settings,
        ingest_settings=_settings(args), cluster=args.cluster, n_workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    print(report.summary())
    if not report.complete:
        print("some chunks were not detected: run the same command again to finish", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK if report.ok else EXIT_SOME_FAILED


IMAGE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def _image_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower().lstrip(".") not in IMAGE_FORMATS:
        raise argparse.ArgumentTypeError(f"{text!r}: the file name must end with .{', .'.join(IMAGE_FORMATS)}")
    return path


class PlotUsageError(Exception):
    """A 'batml plot' command line that argparse cannot check alone (exit status 2)."""


def _read_calls(dataset: str, trust_npz: bool, split: str):
    """Annotated calls (``file, position, class``) of a seed .npz or a CSV of calls, one split or all."""
    from pipeline.io import annotations

    if Path(dataset).suffix.lower() == ".npz":
        calls = annotations.seed_npz_to_calls(annotations.read_seed_npz(dataset, trust=trust_npz))
    else:
        calls = annotations.read_calls_csv(dataset)
    if split != "all":
        if "split" not in calls.columns:
            raise annotations.AnnotationError(f"{dataset}: no 'split' column; use --split all")
        calls = calls[calls["split"] == split]
    return calls


def _model_scored_calls(args):
    """Run a model bundle on the annotated recordings (as 'batml evaluate' does): (calls, detections, classes)."""
    from pipeline.train import Predictor, calls_table, detect_recordings, model_on_annotations

    bundle, cube, recordings, problems = model_on_annotations(
        args.model, args.dataset, args.audio, split=args.split, cube=args.cube, trust_npz=args.trust_npz,
        cluster=args.cluster, n_workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    _print_skipped(problems)
    predictor = Predictor.from_bundle(bundle)
    return calls_table(recordings, cube), detect_recordings(predictor, cube, recordings, bundle.classes), bundle.classes


def _scored_calls(args):
    """(calls, detections, classes) for 'plot pr' and 'plot confusion', from a run's outputs or a model."""
    from pipeline.io.detections import read_detections

    args.split = args.split or ("test" if args.model is not None else "all")
    if args.model is not None:
        if args.calls or args.detections:
            raise PlotUsageError("give MODEL_DIR DATASET --audio AUDIO_DIR, or --calls and --detections, not both")
        if args.dataset is None or args.audio is None:
            raise PlotUsageError("MODEL_DIR needs DATASET and --audio AUDIO_DIR")
        return _model_scored_calls(args)
    if not (args.calls and args.detections):
        raise PlotUsageError("give --calls DATASET and --detections OUT_DIR (or MODEL_DIR DATASET --audio AUDIO_DIR)")
    detections = read_detections(args.detections)
    return _read_calls(args.calls, args.trust_npz, args.split), detections, None


def cmd_plot(args) -> int:
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


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own; indented lines (examples) stay as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n".join(indent + line if line.startswith(" ") else fill(line, width, indent) for line in text.splitlines())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batml",
        description="Detect bat echolocation calls and classify their species in ultrasonic recordings, "
        "from a laptop to a SLURM cluster.",
        epilog="Exit status: 0 ok; 1 error; 2 bad command line; 3 done but some files failed (listed); "
        "130 interrupted (run the same command again to resume).",
    )
    parser.add_argument("--version", action="version", version=f"batml {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file (see README)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or dashboard address")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_parser = sub.add_parser

    def add_parser(**kwargs):  # every subcommand keeps the line breaks of its examples
        return _add_parser(formatter_class=_HelpFormatter, **kwargs)

    sub.add_parser = add_parser

    p = sub.add_parser(
        parents=[common],
        name="simulate",
        epilog="Examples:\n  batml simulate example --minutes 1\n  batml simulate sim --minutes 20 --seed 1 --overlap-fraction 0.3",
        help="write a synthetic archive of annotated bat recordings",
        description="Write a synthetic archive: full-spectrum WAV files with calls of the 7 groups "
        "(Barbarg, Envsp, Myosp, Pip35, Pip50, Plesp, Rhisp), noise, empty files and overlapping "
        "species, plus annotations.npz (the seed's format) and annotations.csv. Same seed, same bytes.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write the archive into")
    p.add_argument("--minutes", type=float, default=10.0, help="total audio duration (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--empty-fraction", type=float, default=0.25, help="fraction of files without bats (0.25)")
    p.add_argument(
        "--overlap-fraction", type=float, default=0.2, help="fraction of bat files with 2-3 species at once (0.2)"
    )
    p.add_argument(
        "--time-expanded-fraction", type=float, default=0.0, help="fraction of files written time-expanded x10 (0)"
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        parents=[common],
        name="manifest",
        epilog="Examples:\n  batml manifest /data/night-2026-06-12 -o night.parquet\n  batml manifest /data/bats --time-expansion 10 --channels first -o te.parquet",
        help="list an archive's recordings and their metadata in a Parquet table",
        description="Read the header and GUANO metadata of every WAV file under AUDIO_DIR (no decoding) "
        "and write the manifest: path, size, mtime, sample rate, duration, channels, time expansion, "
        "timestamp, recorder, status and the reason a file cannot be used.",
    )
    p.add_argument("audio", metavar="AUDIO_DIR", help="folder (recursive), fsspec URL or WAV file")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="MANIFEST.parquet", help="the Parquet table to write")
    _add_audio_options(p)
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser(
        parents=[common],
        name="convert",
        epilog="Examples:\n  batml convert seed/annotations.npz -o calls.csv\n  batml convert annotations/ -o calls.csv     # batdetect2 .wav.json files"
        "\n  batml convert 25_05_21_12_12_25_classif_cnn8_hnm1_weights.npy --thresholds 25_05_21_12_12_25_classif_cnn8_hnm1_thresholds.npy -o models/reference-cnn8"
        "\n  batml convert 02_06_21_09_32_04_features_hybrid_cnn_xgboost_hnm2_weights.npy --model-type hybrid_cnn_xgboost --dataset calls.csv --audio /data/labelled -o models/reference-hybrid",
        help="convert annotations to a CSV of calls (from the seed's .npz or batdetect2 .json files), "
        "or the reference system's network weights (.npy) to a model bundle",
        description="Write a CSV of calls (file, position, class, duration, ...) that 'batml train' reads: "
        "from the seed's .npz (a safe format: no pickle needed to read it again) or from a folder of "
        "batdetect2 annotation files (<recording>.wav.json; Latin species names are mapped to the seed's "
        "groups, other events are listed as skipped).\n"
        "Or, given a .npy of the reference system's network weights (luciledierckx/batML, read without "
        "pickle's general loader), write a model bundle: cnn8 (the cnn8 network, or the hybrid's CNN with "
        "its own head), detector (the cnn2 detector: one class, 'bat'), or hybrid_cnn_xgboost (the hybrid's "
        "CNN with boosters trained here on --dataset/--audio). These weights are for research use only, "
        "non-commercial: the bundle's manifest says so.",
    )
    p.add_argument(
        "source", metavar="SOURCE",
        help="a seed .npz, a folder of batdetect2 .json files, or a reference weights .npy",
    )  # fmt: skip
    p.add_argument(
        "--out", "-o", type=Path, required=True, metavar="CALLS.csv|MODEL_DIR",
        help="the CSV to write (annotations), or the model bundle directory (weights .npy)",
    )  # fmt: skip
    p.add_argument("--trust-npz", action="store_true", help="allow pickle in the .npz (only for files you trust)")
    g = p.add_argument_group("reference weights (.npy)")
    g.add_argument("--thresholds", metavar="T.npy", help="the reference's per-class thresholds (percent) of these weights")
    g.add_argument(
        "--model-type", choices=("cnn8", "hybrid_cnn_xgboost", "detector"),
        help="the bundle to make (default: from the weights' shapes: cnn8, or detector for the cnn2 detector)",
    )  # fmt: skip
    g.add_argument("--dataset", metavar="DATASET", help="hybrid_cnn_xgboost: annotations to train the boosters on (.npz or CSV of calls)")
    g.add_argument("--audio", metavar="AUDIO_DIR", help="hybrid_cnn_xgboost: folder of the annotated recordings")
    g.add_argument("--xgboost-params", metavar="CSV", help="hybrid_cnn_xgboost: XGBoost hyperparameters (row xgboost_spectrogram)")
    g.add_argument("--seed", type=int, default=0, help="hybrid_cnn_xgboost: random seed (default 0)")
    _add_audio_options(p)
    _add_cluster_options(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        parents=[common],
        name="ingest",
        epilog="Examples:\n  batml ingest /data/night-2026-06-12 --cube night.zarr\n  batml ingest /data/site01 --cube site01.zarr --cluster slurm --workers 8",
        help="compute the spectrogram cube (zarr) of an archive; resumable",
        description="Compute the model-ready spectrograms of every recording under AUDIO_DIR into a "
        "zarr-backed xarray cube, in parallel with Dask. Running the same command again resumes "
        "where it stopped; a cube made with other settings or files is refused.",
    )
    p.add_argument("audio", metavar="AUDIO_DIR", help="folder (recursive), fsspec URL or WAV file")
    p.add_argument("--cube", type=Path, required=True, metavar="CUBE.zarr", help="the cube to create or resume")
    _add_audio_options(p)
    _add_cluster_options(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        parents=[common],
        name="train",
        epilog="Examples:\n  batml train sim/annotations.npz --audio sim --model-type hybrid_cnn_xgboost --out models/hybrid\n  batml train calls.csv --audio /data/labelled --model-type cnn8 --out models/cnn8 --hnm 1 --seed 3",
        help="train one of the six models on annotated recordings",
        description="Train a model on annotated recordings (the seed's .npz: train_/test_ files, "
        "durations, positions, classes; or a CSV of calls with file, position, class, duration[, split]). "
        "Builds or reuses the spectrogram cube, samples windows, trains the network(s) (and XGBoost on "
        "the embedding for the hybrids), tunes thresholds on a validation split, runs hard negative "
        "mining, evaluates on the test split and writes the model bundle.",
    )
    _add_dataset_options(p)
    p.add_argument("--out", required=True, type=Path, metavar="MODEL_DIR", help="the model bundle to write")
    _add_model_options(p)
    p.add_argument("--hnm", type=int, default=0, metavar="N", help="rounds of hard negative mining (default 0)")
    p.add_argument("--cube", type=Path, metavar="CUBE.zarr", help="spectrogram cube to reuse (default: MODEL_DIR.cube.zarr)")
    _add_audio_options(p)
    _add_cluster_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        parents=[common],
        name="tune",
        epilog="Examples:\n  batml tune sim/annotations.npz --audio sim --model-type hybrid_cnn_xgboost --out tuning --budget 2h\n  batml train sim/annotations.npz --audio sim --out models/tuned --params tuning/best_networks.csv --xgboost-params tuning/best_xgboost.csv",
        help="search a model's hyperparameters with hyperopt (TPE); resumable",
        description="Search the hyperparameters of a model (the seed's search spaces for the CNN, "
        "ResNet and XGBoost stages) with hyperopt's TPE, training on part of the train split and "
        "scoring detection AP on held-out recordings. Every trial is saved to OUT_DIR/trials.json "
        "(JSON) as soon as it ends: running the same command again continues the search. The best "
        "parameters are written as CSVs to pass to 'batml train --params / --xgboost-params'.",
    )
    _add_dataset_options(p)
    p.add_argument("--out", required=True, type=Path, metavar="OUT_DIR", help="trials and best parameters")
    _add_model_options(p)
    p.add_argument("--budget", required=True, metavar="TIME", help="time budget over all runs: 2h, 30m, 1h30m, 900s")
    p.add_argument("--max-trials", type=int, metavar="N", help="stop after N trials in all")
    p.add_argument(
        "--stage", choices=("network", "xgboost", "both"),
        help="what to tune (default: both for hybrids, the network(s) otherwise)",
    )  # fmt: skip
    p.add_argument("--cube", type=Path, metavar="CUBE.zarr", help="spectrogram cube to reuse (default: OUT_DIR/cube.zarr)")
    _add_audio_options(p)
    _add_cluster_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        parents=[common],
        name="detect",
        help="detect bat calls and their species in an archive of recordings (or a cube)",
        description="Build (or reuse) the spectrogram cube of the recordings, run the model over it on a Dask "
        "cluster and write every detected call with its species probabilities: OUT_DIR/detections.parquet "
        "(one row per call), the seed's CSV (detections.csv: one row per call and species above its "
        "threshold), Raven Pro selection tables (OUT_DIR/raven/) and a run report (report.json, report.txt). "
        "Run the same command again after a crash or Ctrl-C: finished chunks are kept.",
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
        help="override a tuned threshold: P for detection, CLASS=P for a class (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--raven", choices=("per-recording", "combined"), default="per-recording",
        help="one Raven table per recording (default) or one combined table",
    )  # fmt: skip
    p.add_argument(
        "--dense", action="store_true",
        help="score every window with the whole model (the slow reference; default: the coarse-to-fine fast path)",
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
    _add_audio_options(p)
    _add_cluster_options(p)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser(
        parents=[common],
        name="evaluate",
        epilog="Examples:\n  batml evaluate models/hybrid sim/annotations.npz --audio sim\n  batml evaluate models/hybrid calls.csv --audio /data/labelled --json > scores.json",
        help="evaluate a model bundle on the test split of annotated recordings",
        description="Detection AP (area under the precision-recall curve), per-class AP and mAP, the "
        "seed's precision/recall/F1 at the tuned thresholds (calls matched within 10 ms), and "
        "multi-label scores on overlapping calls. Also written next to the model.",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a model bundle written by 'batml train'")
    _add_dataset_options(p)
    p.add_argument("--cube", type=Path, metavar="CUBE.zarr", help="spectrogram cube to reuse")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    _add_cluster_options(p)
    p.set_defaults(func=cmd_evaluate)

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
    p.set_defaults(func=cmd_plot)

    def add_kind(name: str, help: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
        k = kinds.add_parser(
            name, parents=[common], help=help, description=description, formatter_class=_HelpFormatter,
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
        k.add_argument("dataset", nargs="?", metavar="DATASET", help="with MODEL_DIR: the annotations (seed .npz or CSV of calls)")
        k.add_argument("--audio", metavar="AUDIO_DIR", help="with MODEL_DIR: folder of the annotated recordings")
        k.add_argument("--cube", type=Path, metavar="CUBE.zarr", help="with MODEL_DIR: spectrogram cube to reuse")
        k.add_argument("--calls", metavar="DATASET", help="annotated calls: a seed .npz or a CSV of calls")
        k.add_argument("--detections", type=Path, metavar="OUT_DIR", help="output folder of 'batml detect' on those recordings")
        k.add_argument(
            "--split", choices=("train", "test", "all"), default=None,
            help="annotated calls to use (default: all with --calls, the test split with MODEL_DIR)",
        )  # fmt: skip
        k.add_argument("--tolerance", type=float, default=0.010, metavar="S", help="matching tolerance (s; default 0.010)")
        k.add_argument("--trust-npz", action="store_true", help="allow pickle in the .npz (only for files you trust)")
        _add_cluster_options(k)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: one line, no traceback."""
    from pipeline.config import SettingsError
    from pipeline.detect_archive import DetectError
    from pipeline.distributed import ClusterError
    from pipeline.io.archive import ArchiveError
    from pipeline.io.annotations import AnnotationError
    from pipeline.io.cube import CubeError
    from pipeline.model.bundle import BundleError
    from pipeline.io.detections import DetectionsError
    from pipeline.model.params import ParamsError
    from pipeline.model.reference import ReferenceModelError
    from pipeline.train import TrainingError

    return (
        SettingsError, DetectError, ClusterError, ArchiveError, CubeError, AnnotationError, BundleError, ParamsError,
        TrainingError, DetectionsError, ReferenceModelError, FileNotFoundError, PermissionError, *_plot_errors(),
    )  # fmt: skip


def _plot_errors() -> tuple[type[BaseException], ...]:
    plot = sys.modules.get("pipeline.plot")  # a PlotError comes from a loaded pipeline.plot only
    return (plot.PlotError,) if plot is not None else ()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with interruptible():  # SIGTERM (kill, SLURM's time limit) stops cleanly like Ctrl-C
            return args.func(args)
    except KeyboardInterrupt:
        print("batml: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as exc:
        print(f"batml: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # full disk, read-only folder...: the system's words, one line
        # A failed write (ENOSPC) names no file: name the command's output instead.
        where = exc.filename or next((getattr(args, k) for k in ("out", "cube") if getattr(args, k, None)), "")
        print(f"batml: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
