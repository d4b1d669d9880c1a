"""``batml manifest``: list an archive's recordings and their metadata."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import EXIT_OK, EXIT_SOME_FAILED, add_audio_options, settings_of


def run(args) -> int:
    from pipeline.io import archive

    settings = settings_of(args)
    paths = archive.discover(args.audio)
    manifest = archive.build_manifest(
        paths, time_expansion=settings.ingest.time_expansion, settings=settings.spectrogram, progress=not args.quiet
    )
    archive.write_manifest(manifest, args.out)
    bad = manifest[manifest["status"] != "ok"]
    print(f"{len(manifest)} files, {len(bad)} rejected -> {args.out}")
    for path, reason in zip(bad["path"], bad["reason"]):
        print(f"rejected: {path}: {reason}")
    return EXIT_SOME_FAILED if len(bad) else EXIT_OK


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add ``batml manifest`` to the subcommands."""
    p = sub.add_parser(
        parents=[common],
        name="manifest",
        epilog="Examples:\n  batml manifest /data/night-2026-06-12 -o night.parquet\n  batml manifest /data/bats --time-expansion 10 --channels first -o te.parquet",
        help="list an archive's recordings and their metadata in a Parquet table",
        description="Read the header and GUANO metadata of every WAV file under AUDIO_DIR (no decoding) "
        "and write the manifest: path, size, mtime, sample rate, duration, channels, time expansion, "
        "timestamp, recorder, status and the reason a file cannot be used.",
    )
    p.add_argument("audio", metavar="AUDIO_DIR", help="folder (recursive), fsspec URL or WAV file")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="MANIFEST.parquet", help="the Parquet table to write")
    add_audio_options(p)
    p.set_defaults(func=run)

