"""``batml ingest``: compute the spectrogram cube of an archive."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import add_audio_options, add_cluster_options, exit_status, settings_of


def run(args) -> int:
    from pipeline.ingestion import ingest

    report = ingest(
        args.audio,
        args.cube,
        settings=settings_of(args),
        cluster=args.cluster,
        n_workers=args.workers,
        progress=not args.quiet,
    )
    print(report.summary())
    return exit_status(report)


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml ingest`` to the subcommands."""
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
    add_audio_options(p)
    add_cluster_options(p)
    p.set_defaults(func=run)

