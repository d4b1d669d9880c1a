"""``batml tune``: search hyperparameters with hyperopt."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import (
    EXIT_OK, add_audio_options, add_cluster_options, add_dataset_options, add_model_options, dataset_options,
    settings_of,
)


def run(args) -> int:
    from pipeline.tuning import TuneSettings, TuningError, parse_budget, tune_model

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
        args.dataset, args.audio, args.out, settings, cube=args.cube, run_settings=settings_of(args),
        trust_npz=args.trust_npz, dataset_options=dataset_options(args), cluster=args.cluster, n_workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    print(
        f"{result.n_trials} trials ({result.n_failed} failed) in {result.elapsed_s / 60:.1f} min; "
        f"best loss {result.best_loss:.4f} (1 - held-out detection AP) at trial {result.best_tid}\n"
        f"best parameters: {args.out}/best_networks.csv"
        + (f", {args.out}/best_xgboost.csv" if settings.stage != "network" else "")
        + f"\ntrials: {args.out}/trials.json (run the same command again to continue)"
    )
    return EXIT_OK


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml tune`` to the subcommands."""
    p = sub.add_parser(
        parents=[common],
        name="tune",
        epilog="Examples:\n  batml tune sim/annotations.npz --audio sim --model-type hybrid_cnn_xgboost --out tuning --budget 2h\n  batml train sim/annotations.npz --audio sim --out models/tuned --params tuning/best_networks.csv --xgboost-params tuning/best_xgboost.csv",
        help="search a model's hyperparameters with hyperopt (TPE); resumable",
        description="Search the hyperparameters of a model (the reference system's search spaces for the CNN, "
        "ResNet and XGBoost stages) with hyperopt's TPE, training on part of the train split and "
        "scoring detection AP on held-out recordings. Every trial is saved to OUT_DIR/trials.json "
        "(JSON) as soon as it ends: running the same command again continues the search. The best "
        "parameters are written as CSVs to pass to 'batml train --params / --xgboost-params'.",
    )
    add_dataset_options(p)
    p.add_argument("--out", required=True, type=Path, metavar="OUT_DIR", help="trials and best parameters")
    add_model_options(p)
    p.add_argument("--budget", required=True, metavar="TIME", help="time budget over all runs: 2h, 30m, 1h30m, 900s")
    p.add_argument("--max-trials", type=int, metavar="N", help="stop after N trials in all")
    p.add_argument(
        "--stage", choices=("network", "xgboost", "both"),
        help="what to tune (default: both for hybrids, the network(s) otherwise)",
    )  # fmt: skip
    p.add_argument("--cube", type=Path, metavar="CUBE.zarr", help="spectrogram cube to reuse (default: OUT_DIR/cube.zarr)")
    add_audio_options(p)
    add_cluster_options(p)
    p.set_defaults(func=run)

