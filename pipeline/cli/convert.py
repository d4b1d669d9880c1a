"""``batml convert``: annotations in any supported format to batml's CSV of calls."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import EXIT_OK, EXIT_SOME_FAILED


def run(args) -> int:
    from pipeline.annotations import convert

    annotation_set = convert(
        args.source,
        args.out,
        format=args.format,
        time_expansion=args.time_expansion,
        species_column=args.species_column,
        species_list=args.species_list,
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
        "  batml convert demo_db.sqlite3 -o calls.csv --time-expansion 10   # soundClass",
        help="convert annotations (Raven, AOEF/Whombat, Tadarida, soundClass, batdetect2, reference-system .npz, CSV) to a CSV of calls",
        description="Write a CSV of calls (file, position, end, low_freq, high_freq, class, event, split, duration; "
        "times in real seconds) that 'batml train' reads, from any supported annotation format. Annotated windows "
        "(AOEF clips, whole annotated files) go to CALLS.windows.csv and a declared class order to CALLS.classes.txt "
        "beside it. Anything left out is listed as skipped (exit status 3).",
    )
    p.add_argument("source", metavar="SOURCE", help="an annotation file or folder (format found from its contents)")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="CALLS.csv", help="the CSV to write")
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
    p.add_argument("--trust-npz", action="store_true", help="allow pickle in the .npz (only for files you trust)")
    p.set_defaults(func=run)
