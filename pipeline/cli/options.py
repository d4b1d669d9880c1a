"""What several ``batml`` commands share: exit statuses, option groups, help layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def settings_of(args):
    from pipeline.config import Settings

    settings = Settings.load(args.config)
    ingest = settings.ingest.replace(
        channels=getattr(args, "channels", None), time_expansion=getattr(args, "time_expansion", None)
    )
    return type(settings)(spectrogram=settings.spectrogram, ingest=ingest)


def add_cluster_options(p: argparse.ArgumentParser, *, auto: bool = False) -> None:
    """``--cluster`` (and its friends); with ``auto``, the command's default is ``auto``: this
    process for a small input, else a local cluster (``batml detect``)."""
    g = p.add_argument_group("cluster")
    if auto:
        g.add_argument(
            "--cluster",
            default="auto",
            metavar="auto|in-process|local|slurm|ADDRESS",
            help="where to run: auto (default: in this process for an input of at most one cube chunk, about "
            "76 s of audio, as worker processes would cost more to start than they save; else a local Dask "
            "cluster), in-process, local, SLURM jobs (dask-jobqueue), or the address of a running scheduler "
            "(tcp://host:8786)",
        )  # fmt: skip
    else:
        g.add_argument(
            "--cluster",
            default="local",
            metavar="local|slurm|ADDRESS",
            help="where to run: a local Dask cluster (default), SLURM jobs (dask-jobqueue), "
            "or the address of a running scheduler (tcp://host:8786)",
        )
    g.add_argument("--workers", type=int, metavar="N", help="workers to start (default: one per CPU core)")

    class LoadClusterConfig(argparse.Action):
        """Merge the YAML into dask.config while parsing: a bad file is a bad command line."""

        def __call__(self, parser, namespace, values, option_string=None):
            from pipeline.distributed import ClusterError, load_cluster_config

            try:
                load_cluster_config(values)
            except ClusterError as exc:
                parser.exit(EXIT_USAGE, f"batml: error: {exc}\n")
            setattr(namespace, self.dest, values)

    g.add_argument(
        "--cluster-config",
        type=Path,
        action=LoadClusterConfig,
        metavar="FILE.yaml",
        help="cluster profile merged over batml's defaults (e.g. batml: slurm: cluster: queue: ...; "
        "see cluster/slurm.yaml)",
    )


def add_audio_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recordings")
    g.add_argument(
        "--time-expansion",
        type=float,
        metavar="X",
        help="time-expansion factor of every file (overrides GUANO's TE; default: GUANO's, else 1)",
    )
    g.add_argument(
        "--channels",
        choices=("each", "first", "mix"),
        help="multichannel files: analyse each channel (default), the first only, or their mean",
    )


def add_dataset_options(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """DATASET, --audio and how to read the annotations (any format of pipeline.annotations)."""
    if positional:
        p.add_argument(
            "dataset", metavar="DATASET",
            help="annotations: a Raven table or folder of them, an AOEF/Whombat .json, a Tadarida folder, a "
            "soundClass database, batdetect2 .json files, the reference system's .npz or a CSV of calls",
        )  # fmt: skip
        p.add_argument("--audio", required=True, metavar="AUDIO_DIR", help="folder of the annotated recordings")
    add_annotation_options(p)


#: ``--element-gap``'s help, in ``batml train`` / ``evaluate`` and ``batml convert``.
ELEMENT_GAP_HELP = (
    "Tadarida: silence (s) below which the echolocation elements of one species (harmonics, fragments, echoes: "
    "Tadarida detects each apart) are one call; default 0.005; 0 keeps Tadarida's elements"
)


def add_annotation_options(p: argparse.ArgumentParser) -> None:
    """How to read annotations: the options of :func:`pipeline.annotations.dataset.read_dataset`."""
    from pipeline.annotations.dataset import RAVEN_EXTENT

    g = p.add_argument_group("annotations")
    g.add_argument(
        "--format", default="auto", metavar="FORMAT",
        help="raven, aoef, tadarida, soundclass, batdetect2, csv or npz (default: auto, from the files)",
    )  # fmt: skip
    g.add_argument(
        "--annotation-time-expansion", type=float, metavar="X",
        help="factor by which the annotations' times are slowed down (e.g. 10 for Raven tables made on x10 "
        "files); default: the format's own",
    )  # fmt: skip
    g.add_argument("--class-names", type=Path, metavar="FILE", help="names of integer classes 1..K, one per line")
    g.add_argument("--species-column", metavar="NAME", help="Raven: the species column; AOEF: the species tag key")
    g.add_argument("--species-list", type=Path, metavar="FILE", help="Tadarida: its species list (SpeciesListComplete.csv)")
    g.add_argument("--element-gap", type=float, metavar="S", help=ELEMENT_GAP_HELP)
    g.add_argument(
        "--annotated-windows", metavar=f"CSV|{RAVEN_EXTENT}",
        help="the parts of the recordings that were annotated (CSV: file,start,end in s), or 'extent' for each "
        "Raven table's extent: negatives are drawn and detections counted only inside them (AOEF clips are "
        "read by themselves)",
    )  # fmt: skip
    g.add_argument(
        "--non-echolocation", choices=("negative", "class", "drop"), default="negative",
        help="feeding buzzes and social calls: learned as negatives (default), as classes 'buzz'/'social', or "
        "left out; insects, birds and noise are always negatives",
    )  # fmt: skip
    g.add_argument(
        "--detection-only", action="store_true", help="learn every bat call as the single class 'bat', whatever its species"
    )
    g.add_argument("--trust-npz", action="store_true", help="allow pickle in the .npz (only for files you trust)")


def dataset_options(args) -> dict:
    """The keywords of :func:`pipeline.annotations.dataset.read_dataset` from the options."""
    return {
        "format": args.format, "time_expansion": args.annotation_time_expansion, "class_names": args.class_names,
        "species_column": args.species_column, "species_list": args.species_list, "element_gap": args.element_gap,
        "annotated_windows": args.annotated_windows, "non_echolocation": args.non_echolocation,
        "detection_only": args.detection_only,
    }  # fmt: skip


def exit_status(report) -> int:
    """A job's exit status from its report: 1 unfinished, 3 done with files left out, else 0."""
    if not report.complete:
        return EXIT_ERROR
    return EXIT_OK if report.ok else EXIT_SOME_FAILED


def print_notes(notes: list[str]) -> None:
    """What the user should know about a dataset, one line each, on stderr."""
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def add_model_options(p: argparse.ArgumentParser) -> None:
    from pipeline.model.registry import ARCHITECTURE_NAMES

    p.add_argument(
        "--model-type", default="hybrid_cnn_xgboost", choices=ARCHITECTURE_NAMES,
        help="which model (default: hybrid_cnn_xgboost, the proposed one)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, metavar="N", help="cap on training epochs (default: the CSV's, with early stopping)")
    p.add_argument("--params", metavar="CSV", help="network hyperparameters (rows cnn_8, cnn_2, ...; default: packaged)")
    p.add_argument("--xgboost-params", metavar="CSV", help="XGBoost hyperparameters (row xgboost_spectrogram)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def print_skipped(problems: list[str]) -> None:
    """The annotated recordings a model was not run on, one line each, on stderr."""
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own; indented lines (examples) stay as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n".join(indent + line if line.startswith(" ") else fill(line, width, indent) for line in text.splitlines())


