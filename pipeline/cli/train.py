"""``batml train``: train one of the six models."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import (
    EXIT_OK, EXIT_SOME_FAILED, add_audio_options, add_cluster_options, add_dataset_options, add_model_options,
    dataset_options, settings_of,
)


def run(args) -> int:
    from pipeline.training.job import TrainSettings, train

    settings = TrainSettings(
        model_type=args.model_type,
        hnm_rounds=args.hnm,
        seed=args.seed,
        epochs=args.epochs,
        networks_csv=args.params,
        xgboost_csv=args.xgboost_params,
        parent=None if args.parent is None else str(args.parent),
        licence=args.licence,
        runtime_precision=args.runtime_precision,
    )
    report = train(
        args.dataset,
        args.audio,
        args.out,
        settings=settings,
        cube=args.cube,
        run_settings=settings_of(args),
        trust_npz=args.trust_npz,
        dataset_options=dataset_options(args),
        cluster=args.cluster,
        n_workers=args.workers,
        progress=not args.quiet,
    )
    print(report.summary())
    return EXIT_SOME_FAILED if report.problems else EXIT_OK


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml train`` to the subcommands."""
    p = sub.add_parser(
        parents=[common],
        name="train",
        epilog="Examples:\n  batml train sim/annotations.npz --audio sim --model-type hybrid_cnn_xgboost --out models/hybrid\n"
        "  batml train calls.csv --audio /data/labelled --model-type cnn8 --out models/cnn8 --hnm 1 --seed 3\n"
        "  batml train raven_tables/ --audio /data/clips --species-column Species --from --out models/mine\n"
        "  batml train project.json --audio /data/clips --from models/hybrid --out models/fine-tuned\n"
        "  batml train RSDB_sample/ --audio RSDB_sample --time-expansion 10 --out models/vigie-chiro",
        help="train one of the six models on annotated recordings (any class list; --from fine-tunes a model)",
        description="Train a model on annotated recordings: any of the annotation formats of 'batml convert' "
        "(Raven tables, AOEF/Whombat, Tadarida, soundClass, batdetect2, the reference system's .npz, a CSV of "
        "calls). The classes are those of the annotations, in their order (detection-only annotations give the "
        "single class 'bat'); test recordings are those of the annotations' test split. Builds or reuses the "
        "spectrogram cube, samples windows (negatives only inside the annotated windows), trains the "
        "network(s) (and XGBoost on the embedding for the hybrids), tunes thresholds on a validation split, "
        "runs hard negative mining, evaluates on the test split and writes the model bundle. With --from, "
        "starts from a trained bundle's networks (the bundled model when no path is given): its output layer "
        "is replaced for the new classes, trained first alone, then with every layer at a lower rate.",
    )
    add_dataset_options(p)
    p.add_argument("--out", required=True, type=Path, metavar="MODEL_DIR", help="the model bundle to write")
    add_model_options(p)
    p.add_argument("--hnm", type=int, default=0, metavar="N", help="rounds of hard negative mining (default 0)")
    p.add_argument(
        "--from", dest="parent", nargs="?", const="default", metavar="MODEL_DIR",
        help="fine-tune a trained model bundle (default when no path is given: the bundled model); its networks "
        "must match --model-type's",
    )  # fmt: skip
    p.add_argument(
        "--licence", metavar="TEXT",
        help="the terms of use of your recordings or annotations when they restrict the model's use (e.g. 'CC BY-NC "
        "4.0'): kept in the bundle's manifest with the parent's, and shown where the model is used",
    )  # fmt: skip
    p.add_argument("--cube", type=Path, metavar="CUBE.zarr", help="spectrogram cube to reuse (default: MODEL_DIR.cube.zarr)")
    p.add_argument(
        "--runtime-precision", choices=("auto", "float"), default="auto",
        help="the network's precision for batml detect (ONNX graphs in the bundle): auto (default) keeps int8 when "
        "it detects the validation recordings within 0.005 of float's detection AP and class mAP; float skips that "
        "check",
    )  # fmt: skip
    add_audio_options(p)
    add_cluster_options(p)
    p.set_defaults(func=run)

