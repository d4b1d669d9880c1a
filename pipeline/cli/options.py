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


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
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


def add_dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="annotations: the seed's .npz or a CSV of calls")
    p.add_argument("--audio", required=True, metavar="AUDIO_DIR", help="folder of the annotated recordings")
    p.add_argument("--trust-npz", action="store_true", help="allow pickle in the .npz (only for files you trust)")


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


