"""Train one of the six models on annotated recordings: ``batml train DATASET --audio DIR ...``.

Steps, each one function below:

1. read the annotations (the seed's ``.npz`` or a CSV of calls) and their class names;
2. build or reuse the spectrogram cube of the audio (the feature cache, keyed by settings);
3. sample training windows: shifted positives, negatives away from every call (bounded);
   a validation split of recordings is set aside for early stopping and thresholds;
4. train the network(s), streaming windows from the cube;
5. hybrids: embeddings of the training windows with Dask, one XGBoost booster per output
   (binary relevance, balanced weights) with ``xgboost.dask``;
6. tune the thresholds on the validation recordings; 7. hard negative mining rounds;
8. save the model bundle, evaluate it on the test split, write the report next to it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.annotations.dataset import Annotations, read_dataset
from pipeline.annotations.matching import usable_annotations
from pipeline.config import Settings
from pipeline.evaluation.recordings import evaluate_model, tuned_thresholds
from pipeline.evaluation.run import write_evaluation
from pipeline.files import check_writable
from pipeline.model.predictor import Predictor, inference_network
from pipeline.training import TrainingError
from pipeline.training.boosters import fit_hybrid_boosters
from pipeline.training.hard_negatives import hard_examples
from pipeline.training.networks import fit_networks


@dataclass(frozen=True)
class TrainSettings:
    """What to train and how (the rest comes from the hyperparameter CSVs).

    Parameters
    ----------
    model_type : one of the six names (:data:`pipeline.model.registry.ARCHITECTURE_NAMES`)
    hnm_rounds : hard negative mining rounds (the seed's default: 0)
    validation_fraction : fraction of training recordings kept for early stopping and thresholds
    seed : random seed (sampling, splits, initial weights, XGBoost)
    epochs : cap on training epochs (default: the CSV's, 200 with early stopping)
    networks_csv, xgboost_csv : the user's hyperparameter CSVs (default: the packaged ones)
    """

    model_type: str = "hybrid_cnn_xgboost"
    hnm_rounds: int = 0
    validation_fraction: float = 0.2
    seed: int = 0
    epochs: int | None = None
    networks_csv: str | None = None
    xgboost_csv: str | None = None


@dataclass
class TrainReport:
    model: Path
    architecture: str
    classes: list[str]
    n_windows: int = 0
    problems: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        from pipeline.evaluation.report import format_report

        lines = [f"model: {self.model} ({self.architecture}), {self.n_windows} training windows, {self.seconds:.0f} s"]
        lines += [f"skipped: {p}" for p in self.problems]
        if self.metrics:
            lines.append(format_report(self.metrics))
        return "\n".join(lines)


def _params(arch, settings: TrainSettings) -> tuple[dict, dict]:
    from pipeline.model.params import load_params
    from pipeline.model.registry import BOOSTER_ROW

    rows = {row: load_params(row, settings.networks_csv) for row in arch.network_rows}
    booster = load_params(BOOSTER_ROW, settings.xgboost_csv) if arch.hybrid else {}
    return rows, booster


def _split_validation(recordings: list, fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(recordings))
    n_val = int(round(fraction * len(recordings))) if len(recordings) > 1 else 0
    val = {int(i) for i in order[:n_val]}
    return [r for i, r in enumerate(recordings) if i not in val], [r for i, r in enumerate(recordings) if i in val]


def train_model(
    annotations: Annotations,
    cube_path: Path,
    settings: TrainSettings,
    *,
    client,
    spectrogram_settings,
    out: Path,
    progress: bool = True,
    audio_dir: str | os.PathLike | None = None,
) -> TrainReport:
    """Train, tune, evaluate and save one model from annotations and an existing cube.

    Annotated recordings that cannot be used are left out, each with one line in
    ``report.problems`` (see :func:`usable_annotations`; ``audio_dir``, when given, is the
    folder no recording may lead out of through a symbolic link).
    """
    import keras

    from pipeline.io.cube import open_cube
    from pipeline.model.bundle import save_bundle
    from pipeline.model.registry import build_networks, get_architecture
    from pipeline.sampling import SamplingSettings, build_samples

    t0 = time.perf_counter()
    arch = get_architecture(settings.model_type)
    classes = annotations.classes
    cube = open_cube(cube_path)
    report = TrainReport(model=out, architecture=arch.name, classes=classes)
    annotations, report.problems = usable_annotations(annotations, cube, audio_dir)
    fit_recs, val_recs = _split_validation(annotations.train, settings.validation_fraction, settings.seed)
    sampling = SamplingSettings()
    train_samples, problems = build_samples(fit_recs, cube, len(classes), sampling, settings.seed)
    val_samples, val_problems = build_samples(val_recs, cube, len(classes), sampling, settings.seed + 1)
    report.problems += problems + val_problems
    if len(train_samples) == 0:
        raise TrainingError("no training window: no annotated recording of the dataset is in the cube")
    rows, booster_params = _params(arch, settings)
    predictor = None
    for round_ in range(settings.hnm_rounds + 1):
        if round_ > 0:  # the seed's HNM: mine with the last model, retrain from scratch
            train_samples = hard_examples(predictor, cube, fit_recs, classes, train_samples)
        keras.utils.set_random_seed(settings.seed + round_)
        networks = build_networks(arch, len(classes), rows)
        histories = fit_networks(arch, networks, rows, str(cube_path), train_samples, val_samples, settings, progress)
        boosters = None
        if arch.hybrid:
            boosters = fit_hybrid_boosters(client, arch, networks, cube_path, train_samples, booster_params, settings)
        predictor = Predictor(arch.name, networks, boosters)
    report.n_windows = len(train_samples)
    thresholds = tuned_thresholds(predictor, cube, val_recs or fit_recs, classes)
    report.metrics = evaluate_model(predictor, cube, annotations.test, classes, thresholds) if annotations.test else {}
    save_bundle(
        out,
        architecture=arch.name,
        classes=classes,
        networks={row: inference_network(network) for row, network in networks.items()},
        boosters=boosters,
        thresholds=thresholds,
        spectrogram=spectrogram_settings,
        training={
            "windows": report.n_windows,
            "recordings": {"fit": len(fit_recs), "validation": len(val_recs), "test": len(annotations.test)},
            "hnm_rounds": settings.hnm_rounds,
            "seed": settings.seed,
            "histories": histories,
            "cube": str(cube_path),
            "seconds": time.perf_counter() - t0,
        },
        metrics=report.metrics,
        params={**rows, **({"xgboost": booster_params} if arch.hybrid else {})},
    )
    report.seconds = time.perf_counter() - t0
    if report.metrics:
        write_evaluation(out, report.metrics)
    return report


def train(
    dataset: str | os.PathLike,
    audio_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    settings: TrainSettings | None = None,
    cube: str | os.PathLike | None = None,
    run_settings: Settings | None = None,
    trust_npz: bool = False,
    cluster: str | None = None,
    client=None,
    n_workers: int | None = None,
    progress: bool = True,
) -> TrainReport:
    """Train a model on annotated recordings: ``batml train`` from Python.

    Parameters
    ----------
    dataset : the seed's ``.npz`` or a CSV of calls
    audio_dir : folder of the recordings the annotations name (``<audio_dir>/<file>.wav``)
    out : the model bundle directory to write
    settings : what to train (:class:`TrainSettings`)
    cube : spectrogram cube to reuse or create (default: ``<out>.cube.zarr``)
    run_settings : spectrogram and ingest settings
    trust_npz : allow pickle when reading the ``.npz`` (only for files you made yourself)
    cluster, client, n_workers : where to run (see :func:`pipeline.distributed.connect`)
    progress : progress bars
    """
    from pipeline.distributed import connect
    from pipeline.ingestion import ingest

    settings = settings or TrainSettings()
    run_settings = run_settings or Settings()
    out = Path(out)
    annotations = read_dataset(dataset, trust_npz=trust_npz)
    check_writable(out, "the model bundle")  # before hours of training, not after
    cube = Path(cube) if cube is not None else out.with_name(out.name + ".cube.zarr")
    with connect(cluster, client=client, n_workers=n_workers, quiet=not progress) as client:
        ingest(audio_dir, cube, settings=run_settings, client=client, progress=progress).require_complete()
        return train_model(
            annotations, cube, settings, client=client, spectrogram_settings=run_settings.spectrogram,
            out=out, progress=progress, audio_dir=audio_dir,
        )  # fmt: skip


