"""``batml convert``: annotations in any supported format to batml's CSV of calls, or the
reference system's network weights (``.npy``) to a model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import ELEMENT_GAP_HELP, EXIT_OK, EXIT_SOME_FAILED, add_cluster_options


def _convert_reference(args) -> int:
    """``batml convert WEIGHTS.npy``: the reference system's network as a model bundle."""
    from pipeline.config import Settings
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
        ingest = Settings().ingest.replace(time_expansion=args.audio_time_expansion, channels=args.channels)
        report = reference.hybrid_bundle(
            args.source, args.dataset, args.audio, args.out, thresholds_path=args.thresholds, ingest_settings=ingest,
            xgboost_csv=args.xgboost_params, seed=args.seed, trust_npz=args.trust_npz, cluster=args.cluster,
            n_workers=args.workers, progress=not args.quiet,
        )  # fmt: skip
        print(report.summary())
    else:
        reference.network_bundle(args.source, args.out, thresholds_path=args.thresholds, model_type=args.model_type)
        print(f"{args.source} -> {args.out}")
    print(f"licence: {reference.REFERENCE_LICENCE} (weights from {reference.REFERENCE_REPOSITORY}); it applies to this model")
    return EXIT_OK


def run(args) -> int:
    from pipeline.annotations import convert

    if Path(args.source).suffix.lower() == ".npy":
        return _convert_reference(args)

    annotation_set = convert(
        args.source,
        args.out,
        format=args.format,
        time_expansion=args.time_expansion,
        species_column=args.species_column,
        species_list=args.species_list,
        element_gap=args.element_gap,
        trust=True if args.trust_npz else None,
    )
    calls = annotation_set.calls
    print(f"{len(calls)} calls in {calls['file'].nunique()} recordings ({annotation_set.source}) -> {args.out}")
    for line in annotation_set.skipped:
        print(f"skipped: {line}")
    return EXIT_SOME_FAILED if annotation_set.skipped else EXIT_OK


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml convert`` to the subcommands."""
    p = sub.add_parser(
        parents=[common],
        name="convert",
        epilog="Examples:\n  batml convert seed/annotations.npz -o calls.csv\n"
        "  batml convert anns/ -o calls.csv                          # batdetect2 .wav.json files\n"
        "  batml convert raven_tables/ -o calls.csv --species-column Species\n"
        "  batml convert whombat_project.json -o calls.csv           # soundevent / AOEF\n"
        "  batml convert RSDB_sample/ -o calls.csv                   # Tadarida eti/ + txt/\n"
        "  batml convert demo_db.sqlite3 -o calls.csv --time-expansion 10   # soundClass\n"
        "  batml convert 25_05_21_12_12_25_classif_cnn8_hnm1_weights.npy --thresholds "
        "25_05_21_12_12_25_classif_cnn8_hnm1_thresholds.npy -o models/reference-cnn8\n"
        "  batml convert 02_06_21_09_32_04_features_hybrid_cnn_xgboost_hnm2_weights.npy --model-type "
        "hybrid_cnn_xgboost --dataset calls.csv --audio /data/labelled -o models/reference-hybrid",
        help="convert annotations (Raven, AOEF/Whombat, Tadarida, soundClass, batdetect2, reference-system .npz, CSV) to a CSV of calls",
        description="Write a CSV of calls (file, position, end, low_freq, high_freq, class, event, split, duration; "
        "times in real seconds) that 'batml train' reads, from any supported annotation format. Annotated windows "
        "(AOEF clips, whole annotated files) go to CALLS.windows.csv and a declared class order to CALLS.classes.txt "
        "beside it. Anything left out is listed as skipped (exit status 3).\n"
        "Or, given a .npy of the reference system's network weights (luciledierckx/batML, read without "
        "pickle's general loader), write a model bundle: cnn8 (the cnn8 network, or the hybrid's CNN with "
        "its own head), detector (the cnn2 detector: one class, 'bat'), or hybrid_cnn_xgboost (the hybrid's "
        "CNN with boosters trained here on --dataset/--audio). These weights are for research use only, "
        "non-commercial: the bundle's manifest says so.",
    )
    p.add_argument(
        "source", metavar="SOURCE",
        help="an annotation file or folder (format found from its contents), or reference weights (.npy)",
    )  # fmt: skip
    p.add_argument(
        "--out", "-o", type=Path, required=True, metavar="CALLS.csv|MODEL_DIR",
        help="the CSV to write (annotations), or the model bundle directory (weights .npy)",
    )  # fmt: skip
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "raven", "aoef", "tadarida", "soundclass", "batdetect2", "csv", "npz"],
        help="the annotation format (default: auto, found from the suffix, folder layout, JSON keys or SQLite tables)",
    )
    p.add_argument(
        "--time-expansion",
        type=float,
        default=None,
        metavar="X",
        help="factor by which the annotations' times are slowed down (e.g. 10 for Raven tables made on x10 "
        "time-expanded files, and for soundClass labels of such files); default: the format's own (real time)",
    )
    p.add_argument(
        "--species-column",
        default=None,
        metavar="NAME",
        help="Raven: the column holding the species (default: Species, Class, Label, Annotation...); "
        "AOEF: the tag key of the species (default: species)",
    )
    p.add_argument(
        "--species-list",
        type=Path,
        default=None,
        metavar="FILE",
        help="Tadarida: its SpeciesListComplete.csv (default: found beside the data); "
        "npz/CSV with integer classes: a names file, one class name per line",
    )
    p.add_argument("--element-gap", type=float, default=None, metavar="S", help=ELEMENT_GAP_HELP)
    p.add_argument("--trust-npz", action="store_true", help="allow pickle in the .npz (only for files you trust)")
    g = p.add_argument_group("reference weights (.npy)")
    g.add_argument("--thresholds", metavar="T.npy", help="the reference's per-class thresholds (percent) of these weights")
    g.add_argument(
        "--model-type", choices=("cnn8", "hybrid_cnn_xgboost", "detector"),
        help="the bundle to make (default: from the weights' shapes: cnn8, or detector for the cnn2 detector)",
    )  # fmt: skip
    g.add_argument("--dataset", metavar="DATASET", help="hybrid_cnn_xgboost: annotations to train the boosters on")
    g.add_argument("--audio", metavar="AUDIO_DIR", help="hybrid_cnn_xgboost: folder of the annotated recordings")
    g.add_argument("--audio-time-expansion", type=float, metavar="X", help="hybrid_cnn_xgboost: the recordings' time expansion")
    g.add_argument("--channels", choices=("each", "first", "mix"), help="hybrid_cnn_xgboost: multichannel recordings")
    g.add_argument("--xgboost-params", metavar="CSV", help="hybrid_cnn_xgboost: XGBoost hyperparameters (row xgboost_spectrogram)")
    g.add_argument("--seed", type=int, default=0, help="hybrid_cnn_xgboost: random seed (default 0)")
    add_cluster_options(p)
    p.set_defaults(func=run)
