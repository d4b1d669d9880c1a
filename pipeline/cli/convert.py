"""``batml convert``: convert annotations to a CSV of calls."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import EXIT_OK, EXIT_SOME_FAILED


def run(args) -> int:
    from pipeline.io import annotations

    source = Path(args.source)
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


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml convert`` to the subcommands."""
    p = sub.add_parser(
        parents=[common],
        name="convert",
        epilog="Examples:\n  batml convert seed/annotations.npz -o calls.csv\n  batml convert annotations/ -o calls.csv     # batdetect2 .wav.json files",
        help="convert annotations to a CSV of calls (from the seed's .npz or batdetect2 .json files)",
        description="Write a CSV of calls (file, position, class, duration, ...) that 'batml train' reads: "
        "from the seed's .npz (a safe format: no pickle needed to read it again) or from a folder of "
        "batdetect2 annotation files (<recording>.wav.json; Latin species names are mapped to the seed's "
        "groups, other events are listed as skipped).",
    )
    p.add_argument("source", metavar="SOURCE", help="a seed .npz or a folder of batdetect2 .json files")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="CALLS.csv", help="the CSV to write")
    p.add_argument("--trust-npz", action="store_true", help="allow pickle in the .npz (only for files you trust)")
    p.set_defaults(func=run)

