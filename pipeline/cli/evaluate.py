"""``batml evaluate``: evaluate a model bundle on annotated recordings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli.options import (
    EXIT_OK, EXIT_SOME_FAILED, add_audio_options, add_cluster_options, add_dataset_options, dataset_options,
    print_notes, print_skipped, settings_of,
)


def run(args) -> int:
    from pipeline.evaluation.run import evaluate_saved_model

    result = evaluate_saved_model(
        args.model, args.dataset, args.audio, cube=args.cube, trust_npz=args.trust_npz,
        dataset_options=dataset_options(args), ingest_settings=settings_of(args).ingest, cluster=args.cluster, n_workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    if args.json:
        import json

        print(json.dumps(result, allow_nan=False))
    else:
        from pipeline.evaluation.report import format_report

        print(format_report(result))
    print_notes(result["notes"])
    if result.get("licence"):
        print(f"note: the model's licence: {result['licence']}", file=sys.stderr)
    print_skipped(result["skipped"])
    return EXIT_SOME_FAILED if result["skipped"] else EXIT_OK


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml evaluate`` to the subcommands."""
    p = sub.add_parser(
        parents=[common],
        name="evaluate",
        epilog="Examples:\n  batml evaluate models/hybrid sim/annotations.npz --audio sim\n  batml evaluate models/hybrid calls.csv --audio /data/labelled --json > scores.json",
        help="evaluate a model bundle on the test split of annotated recordings",
        description="Detection AP (area under the precision-recall curve), per-class AP and mAP, the "
        "reference system's precision/recall/F1 at the tuned thresholds (calls matched within 10 ms), and "
        "multi-label scores on overlapping calls. Also written next to the model.",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a model bundle written by 'batml train'")
    add_dataset_options(p)
    p.add_argument("--cube", type=Path, metavar="CUBE.zarr", help="spectrogram cube to reuse")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    add_audio_options(p)
    add_cluster_options(p)
    p.set_defaults(func=run)

