"""Train one of the six models on annotated recordings: ``batml train DATASET --audio DIR ...``.

Steps, each one function below:

1. read the annotations (the reference system's ``.npz`` or a CSV of calls) and their class names;
2. build or reuse the spectrogram cube of the audio (the feature cache, keyed by settings);
3. sample training windows: shifted positives, negatives away from every call (bounded);
   a validation split of recordings is set aside for early stopping and thresholds;
4. train the network(s), streaming windows from the cube;
5. hybrids: embeddings of the training windows with Dask, one XGBoost booster per output
   (binary relevance, balanced weights) with ``xgboost.dask``;
6. hard negative mining rounds; 7. calibrate the detection score, then tune the thresholds,
   on the validation recordings;
8. save the model bundle, evaluate it on the test split, write the report next to it.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.annotations.dataset import Annotations, read_dataset
from pipeline.annotations.matching import usable_annotations
from pipeline.config import Settings
from pipeline.evaluation.recordings import calibrated_thresholds, evaluate_model
from pipeline.evaluation.run import write_evaluation
from pipeline.files import check_writable
from pipeline.model.predictor import Predictor, inference_network
from pipeline.training import TrainingError
from pipeline.training.boosters import fit_hybrid_boosters
from pipeline.training.fine_tuning import joined_licence, load_parent, parent_record, transfer_weights
from pipeline.training.hard_negatives import hard_examples
from pipeline.training.networks import fit_networks


@dataclass(frozen=True)
class TrainSettings:
    """What to train and how (the rest comes from the hyperparameter CSVs).

    Parameters
    ----------
    model_type : one of the six names (:data:`pipeline.model.registry.ARCHITECTURE_NAMES`)
    hnm_rounds : hard negative mining rounds (the reference system's default: 0)
    validation_fraction : fraction of training recordings kept for early stopping and thresholds
    seed : random seed (sampling, splits, initial weights, XGBoost)
    epochs : cap on training epochs (default: the CSV's, 200 with early stopping)
    networks_csv, xgboost_csv : the user's hyperparameter CSVs (default: the packaged ones)
    licence : the terms of use of the training data, when they restrict the model's use (e.g.
        ``"CC BY-NC 4.0 (recordings of ...)"``): kept in the manifest and shown where it is used
    parent : a model bundle to fine-tune (its networks' weights are the starting point; its
        output layer is replaced when the class list differs); None trains from scratch
    head_epochs : fine-tuning: epochs (at most) of the first phase, the parent's layers frozen
    fine_tune_rate : fine-tuning: factor of the learning rate in the second phase (all layers)
    runtime_precision : the precision of the bundle's runtime graphs (what ``batml detect`` runs):
        ``"auto"`` keeps int8 when it detects the validation recordings within 0.005 of float's
        detection AP and class mAP (:mod:`pipeline.training.precision`), ``"float"`` skips that check
    """

    model_type: str = "hybrid_cnn_xgboost"
    hnm_rounds: int = 0
    validation_fraction: float = 0.2
    seed: int = 0
    epochs: int | None = None
    networks_csv: str | None = None
    xgboost_csv: str | None = None
    licence: str | None = None
    parent: str | None = None
    head_epochs: int = 30
    fine_tune_rate: float = 0.1
    runtime_precision: str = "auto"


@dataclass
class TrainReport:
    model: Path
    architecture: str
    classes: list[str]
    n_windows: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        from pipeline.evaluation.report import format_report

        lines = [f"model: {self.model} ({self.architecture}), {self.n_windows} training windows, {self.seconds:.0f} s"]
        lines.append(f"classes ({len(self.classes)}): {', '.join(self.classes)}")
        lines += [f"note: {n}" for n in self.notes]
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


#: Fewer training recordings than this are split into their annotated clips for validation.
MIN_RECORDINGS_TO_SPLIT = 5


def _split_validation(recordings: list, fraction: float, seed: int, n_classes: int):
    """The fit and validation recordings: a ``fraction`` of the recordings, stratified over the
    classes they hold (multi-label iterative stratification, scikit-multilearn), so that rare
    classes are in both; by annotated clip when there are too few recordings."""
    if len(recordings) < MIN_RECORDINGS_TO_SPLIT:
        clips = [clip for rec in recordings for clip in _clips(rec)]
        if len(clips) >= MIN_RECORDINGS_TO_SPLIT:
            recordings = clips
    n_val = int(round(fraction * len(recordings))) if len(recordings) > 1 else 0
    if n_val == 0:
        return list(recordings), []
    val = _stratified_choice(recordings, n_val, n_classes, seed)
    return [r for i, r in enumerate(recordings) if i not in val], [r for i, r in enumerate(recordings) if i in val]


def _stratified_choice(recordings: list, n_val: int, n_classes: int, seed: int) -> set[int]:
    """Indices of ``n_val`` recordings whose classes follow the whole set's (random order first,
    so that equal recordings are taken at random)."""
    order = np.random.default_rng(seed).permutation(len(recordings))
    presence = np.zeros((len(recordings), n_classes), dtype=int)
    for i, rec in enumerate(recordings):
        known = rec.classes[rec.classes >= 1] if rec.classes is not None else []
        presence[i, np.asarray(known, dtype=np.int64) - 1] = 1
    if n_classes < 2 or not presence.any():
        return {int(i) for i in order[:n_val]}
    from skmultilearn.model_selection import IterativeStratification

    stratifier = IterativeStratification(
        n_splits=2, order=1, sample_distribution_per_fold=[n_val / len(recordings), 1 - n_val / len(recordings)]
    )
    with _global_numpy_seed(seed):  # scikit-multilearn breaks ties with numpy's global generator
        _, chosen = next(stratifier.split(np.zeros((len(order), 1)), presence[order]))
    return {int(order[i]) for i in chosen}


@contextlib.contextmanager
def _global_numpy_seed(seed: int):
    """numpy's global random state seeded for the block, then put back as it was."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _clips(rec) -> list:
    """A recording as one annotated recording per annotated window (clip); itself if it has none."""
    if rec.windows is None or len(rec.windows) < 2:
        return [rec]
    clips = []
    for start, end in rec.windows:
        inside = (rec.positions >= start) & (rec.positions < end)
        negatives = rec.negatives[(rec.negatives >= start) & (rec.negatives < end)] if rec.negatives is not None else None
        clips.append(replace(rec, positions=rec.positions[inside], negatives=negatives,
                             classes=None if rec.classes is None else rec.classes[inside],
                             windows=np.array([[start, end]])))  # fmt: skip
    return clips


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
    pretrained: dict | None = None,
    source: dict | None = None,
    licence: str | None = None,
) -> TrainReport:
    """Train, tune, evaluate and save one model from annotations and an existing cube.

    Annotated recordings that cannot be used are left out, each with one line in
    ``report.problems`` (see :func:`usable_annotations`; ``audio_dir``, when given, is the
    folder no recording may lead out of through a symbolic link).

    ``pretrained`` (one Keras network per row of the architecture) are kept as they are:
    only a hybrid's boosters are trained, on their embeddings, then the thresholds are tuned
    (:mod:`pipeline.model.reference`). ``source`` and ``licence`` go to the bundle's manifest
    (see :func:`pipeline.model.bundle.save_bundle`); a fine-tuned model inherits its parent's,
    and ``settings.licence`` (the training data's terms) joins them.
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
    report = TrainReport(model=out, architecture=arch.name, classes=classes, notes=list(annotations.notes))
    parent = load_parent(settings.parent, arch, spectrogram_settings) if settings.parent else None
    annotations, report.problems = usable_annotations(annotations, cube, audio_dir)
    fit_recs, val_recs = _split_validation(annotations.train, settings.validation_fraction, settings.seed, len(classes))
    sampling = SamplingSettings()
    train_samples, problems = build_samples(fit_recs, cube, len(classes), sampling, settings.seed)
    val_samples, val_problems = build_samples(val_recs, cube, len(classes), sampling, settings.seed + 1)
    report.problems += problems + val_problems
    if len(train_samples) == 0:
        raise TrainingError("no training window: no annotated recording of the dataset is in the cube")
    rows, booster_params = _params(arch, settings)
    predictor = None
    for round_ in range(settings.hnm_rounds + 1):
        if round_ > 0:  # the reference system's HNM: mine with the last model, retrain from scratch
            train_samples = hard_examples(predictor, cube, fit_recs, classes, train_samples)
        keras.utils.set_random_seed(settings.seed + round_)
        if pretrained is not None:  # kept as they are; a hybrid's boosters are still trained
            networks, histories, new_layers = dict(pretrained), {}, None
        else:
            networks = build_networks(arch, len(classes), rows)
            new_layers = transfer_weights(parent, networks) if parent is not None else None
            histories = fit_networks(
                arch, networks, rows, str(cube_path), train_samples, val_samples, settings, progress,
                new_layers=new_layers,
            )  # fmt: skip
        boosters = None
        if arch.hybrid:
            boosters = fit_hybrid_boosters(client, arch, networks, cube_path, train_samples, booster_params, settings)
        predictor = Predictor(arch.name, networks, boosters)
    report.n_windows = len(train_samples)
    calibration, thresholds = calibrated_thresholds(predictor, cube, val_recs or fit_recs, classes)
    if calibration.is_identity:
        report.notes.append(
            "detection scores are not calibrated (the validation recordings have no call peak, or every "
            "peak or none matched a call): the score is the raw call score"
        )
    report.metrics = (
        evaluate_model(predictor, cube, annotations.test, classes, thresholds, calibration) if annotations.test else {}
    )
    graphs, runtime = None, None
    if settings.runtime_precision == "auto" and arch.family == "cnn" and not arch.two_stage:
        from pipeline.training.precision import choose_runtime_graphs

        row = arch.network_rows[0]
        chosen, runtime = choose_runtime_graphs(networks[row], boosters, cube, fit_recs, val_recs, classes)
        graphs = {row: chosen} if chosen is not None else None
    save_bundle(
        out,
        architecture=arch.name,
        classes=classes,
        networks={row: inference_network(network) for row, network in networks.items()},
        boosters=boosters,
        thresholds=thresholds,
        calibration=calibration,
        spectrogram=spectrogram_settings,
        training={
            "windows": report.n_windows,
            "recordings": {"fit": len(fit_recs), "validation": len(val_recs), "test": len(annotations.test)},
            "hnm_rounds": settings.hnm_rounds,
            "seed": settings.seed,
            "pretrained_networks": pretrained is not None,
            "histories": histories,
            "cube": str(cube_path),
            "seconds": time.perf_counter() - t0,
            "annotations": annotations.source,
            **({"parent": parent_record(parent, new_layers)} if parent is not None else {}),
        },
        source=source if source is not None else (parent.manifest.get("source") if parent is not None else None),
        licence=joined_licence(licence, parent.licence if parent is not None else None, settings.licence),
        metrics=report.metrics,
        params={**rows, **({"xgboost": booster_params} if arch.hybrid else {})},
        graphs=graphs,
        runtime=runtime,
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
    dataset_options: dict | None = None,
    cluster: str | None = None,
    client=None,
    n_workers: int | None = None,
    progress: bool = True,
    pretrained: dict | None = None,
    source: dict | None = None,
    licence: str | None = None,
) -> TrainReport:
    """Train a model on annotated recordings: ``batml train`` from Python.

    Parameters
    ----------
    dataset : annotations in any format of :mod:`pipeline.annotations` (a path), or an
        :class:`~pipeline.annotations.dataset.Annotations` already read
    audio_dir : folder of the recordings the annotations name (``<audio_dir>/<file>.wav``)
    out : the model bundle directory to write
    settings : what to train (:class:`TrainSettings`; ``parent`` fine-tunes a bundle)
    cube : spectrogram cube to reuse or create (default: ``<out>.cube.zarr``)
    run_settings : spectrogram and ingest settings (a parent's spectrogram settings replace them)
    trust_npz : allow pickle when reading the ``.npz`` (only for files you made yourself)
    dataset_options : how to read the annotations (:func:`~pipeline.annotations.dataset.read_dataset`'s
        keywords: ``format``, ``time_expansion``, ``class_names``, ``annotated_windows``,
        ``non_echolocation``, ``detection_only``...)
    cluster, client, n_workers : where to run (see :func:`pipeline.distributed.connect`)
    progress : progress bars
    pretrained, source, licence : see :func:`train_model`
    """
    from pipeline.distributed import connect
    from pipeline.ingestion import ingest

    settings = settings or TrainSettings()
    run_settings = run_settings or Settings()
    out = Path(out)
    annotations = dataset if isinstance(dataset, Annotations) else read_dataset(
        dataset, trust_npz=trust_npz, **(dataset_options or {}))  # fmt: skip
    if settings.parent:
        from pipeline.model.registry import get_architecture

        parent = load_parent(settings.parent, get_architecture(settings.model_type), None)
        run_settings = type(run_settings)(spectrogram=parent.spectrogram, ingest=run_settings.ingest)
    check_writable(out, "the model bundle")  # before hours of training, not after
    cube = Path(cube) if cube is not None else out.with_name(out.name + ".cube.zarr")
    with connect(cluster, client=client, n_workers=n_workers, quiet=not progress) as client:
        ingest(audio_dir, cube, settings=run_settings, client=client, progress=progress).require_complete()
        return train_model(
            annotations, cube, settings, client=client, spectrogram_settings=run_settings.spectrogram,
            out=out, progress=progress, audio_dir=audio_dir, pretrained=pretrained, source=source,
            licence=licence,
        )  # fmt: skip


