"""``batml train``: train one of the six models."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_audio_options,
    add_cluster_options,
    add_dataset_options,
    add_model_options,
    settings_of,
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
    )
    report = train(
        args.dataset,
        args.audio,
        args.out,
        settings=settings,
        cube=args.cube,
        run_settings=settings_of(args),
        trust_npz=args.trust_npz,
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
        epilog="Examples:\n  batml train sim/annotations.npz --audio sim --model-type hybrid_cnn_xgboost --out models/hybrid\n  batml train calls.csv --audio /data/labelled --model-type cnn8 --out models/cnn8 --hnm 1 --seed 3",
        help="train one of the six models on annotated recordings",
        description="Train a model on annotated recordings (the seed's .npz: train_/test_ files, "
        "durations, positions, classes; or a CSV of calls with file, position, class, duration[, split]). "
        "Builds or reuses the spectrogram cube, samples windows, trains the network(s) (and XGBoost on "
        "the embedding for the hybrids), tunes thresholds on a validation split, runs hard negative "
        "mining, evaluates on the test split and writes the model bundle.",
    )
    add_dataset_options(p)
    p.add_argument("--out", required=True, type=Path, metavar="MODEL_DIR", help="the model bundle to write")
    add_model_options(p)
    p.add_argument("--hnm", type=int, default=0, metavar="N", help="rounds of hard negative mining (default 0)")
    p.add_argument("--cube", type=Path, metavar="CUBE.zarr", help="spectrogram cube to reuse (default: MODEL_DIR.cube.zarr)")
    add_audio_options(p)
    add_cluster_options(p)
    p.set_defaults(func=run)

