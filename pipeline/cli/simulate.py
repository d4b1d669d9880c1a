"""``batml simulate``: write a synthetic annotated archive."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import EXIT_OK


def run(args) -> int:
    from pipeline.simulation import simulate_archive
    from pipeline.simulation.settings import settings_from_arguments

    archive = simulate_archive(
        args.out_dir, minutes=args.minutes, seed=args.seed, settings=settings_from_arguments(args),
        progress=not args.quiet,
    )  # fmt: skip
    written = [str(p) for p in (archive.annotations_npz, archive.annotations_csv) if p is not None]
    print(
        f"{len(archive.files)} recordings, {archive.duration_s / 60:.1f} min, {archive.n_calls} calls "
        f"-> {archive.root}\nannotations: {', '.join(written)}"
    )
    for note in archive.notes:
        print(f"note: {note}")
    return EXIT_OK


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml simulate`` to the subcommands: one option per simulation setting."""
    from pipeline.simulation.settings import add_arguments

    p = sub.add_parser(
        parents=[common],
        name="simulate",
        epilog="Examples:\n  batml simulate example --minutes 1\n  batml simulate sim --minutes 20 --seed 1 --overlap-fraction 0.3\n"
        "  batml simulate varied --minutes 20 --preset varied\n"
        "  batml simulate bg --minutes 5 --preset varied --background-folder ../shared/data/real/unannotated "
        "--background-licence 'CC BY-NC 4.0'",
        help="write a synthetic archive of annotated bat recordings",
        description="Write a synthetic archive: full-spectrum WAV files with calls of the 7 groups "
        "(Barbarg, Envsp, Myosp, Pip35, Pip50, Plesp, Rhisp), noise, empty files and overlapping "
        "species, plus annotations.npz (the reference system's format) and annotations.csv. With --preset "
        "varied (or the options below) it also randomises call designs (a generic 'bat' family), buzzes, "
        "social calls, propagation, microphones, recorders and noises; annotations.csv then gives each "
        "call's class and event, and annotations.npz is not written. Same seed and options, same bytes.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write the archive into")
    p.add_argument("--minutes", type=float, default=10.0, help="total audio duration (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_arguments(p)
    p.set_defaults(func=run)
