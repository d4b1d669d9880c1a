"""``batml simulate``: write a synthetic annotated archive."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import EXIT_OK


def run(args) -> int:
    from pipeline.simulation import simulate_archive

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


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml simulate`` to the subcommands."""
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
    p.set_defaults(func=run)

