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

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import SEED_SPECIES, Settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class TrainingError(ValueError):
    """Training cannot go on as asked; one line for the user."""


# --- 1. annotations -------------------------------------------------------------------------


@dataclass
class Annotations:
    """Annotated recordings of both splits, and the class names (class k is ``classes[k-1]``)."""

    train: list
    test: list
    classes: list[str]
    has_classes: bool


def read_annotations(path: str | os.PathLike, *, trust_npz: bool = False) -> Annotations:
    """Read the seed's ``.npz`` or a CSV of calls (``file, position, class[, split, duration]``)."""
    from pipeline.io.annotations import RecordingCalls, read_calls_csv, read_seed_npz

    path = Path(path)
    if path.suffix.lower() == ".npz":
        data = read_seed_npz(path, trust=trust_npz)
        return Annotations(data.train, data.test, list(SEED_SPECIES), data.has_classes)
    table = read_calls_csv(path)
    if "duration" not in table.columns:
        raise TrainingError(f"{path}: a CSV of calls needs a 'duration' column (recording length, s)")
    split = table["split"] if "split" in table.columns else pd.Series("train", index=table.index)
    out = {"train": [], "test": []}
    for (name, part), rows in table.groupby([table["file"], split], sort=True):
        out["test" if part == "test" else "train"].append(
            RecordingCalls(
                file=str(name),
                duration=float(rows["duration"].iloc[0]),
                positions=rows["position"].to_numpy(np.float64),
                classes=rows["class"].to_numpy(np.int64),
            )
        )
    return Annotations(out["train"], out["test"], list(SEED_SPECIES), True)


def usable_annotations(annotations: Annotations, cube, audio_dir=None) -> tuple[Annotations, list[str]]:
    """The annotated recordings of both splits that can be used, and one line per other one
    saying why (see :func:`usable_recordings`)."""
    train, train_problems = usable_recordings(annotations.train, cube, audio_dir)
    test, test_problems = usable_recordings(annotations.test, cube, audio_dir)
    usable = Annotations(train, test, annotations.classes, annotations.has_classes)
    return usable, train_problems + test_problems


def usable_recordings(recordings: list, cube, audio_dir=None) -> tuple[list, list[str]]:
    """The annotated recordings that can be used, and one line per other one saying why.

    A recording is left out when its name is absolute or holds ``..`` (it would lead outside
    the audio folder), when no recording of the cube matches it (not found, rejected by the
    manifest with its reason, ambiguous, failed; see :func:`pipeline.sampling.match_recordings`)
    or, for a local ``audio_dir``, when its file is a symbolic link to a file outside
    ``audio_dir``. Names are only ever matched against the recordings found under the audio
    folder, never opened as paths.
    """
    from pipeline.sampling import match_recordings

    root = _local_root(audio_dir)
    paths = cube["path"].values
    indices, problems = match_recordings(cube, [rec.file for rec in recordings])
    kept = []
    for rec, r in zip(recordings, indices):
        if r is None:
            continue
        if root is not None and not _inside(str(paths[r]), root):
            target = os.path.realpath(str(paths[r]))
            problems.append(f"{rec.file}: refused: a link to {target}, outside the audio folder {root}")
            continue
        kept.append(rec)
    return kept, problems


def _local_root(audio_dir) -> str | None:
    """The real path of a local audio folder (or of a single file's folder); None for a URL."""
    from fsspec.core import split_protocol

    if audio_dir is None or split_protocol(os.fspath(audio_dir))[0] is not None:
        return None
    root = os.path.realpath(os.fspath(audio_dir))
    return root if os.path.isdir(root) else os.path.dirname(root)


def _inside(path: str, root: str) -> bool:
    real = os.path.realpath(path)
    return os.path.commonpath([real, root]) == root


def calls_table(recordings, cube) -> pd.DataFrame:
    """The calls of annotated recordings as :mod:`pipeline.evaluate` reads them (``recording``
    = the cube's recording index as a string)."""
    from pipeline.sampling import match_recordings

    rows = []
    indices, _ = match_recordings(cube, [rec.file for rec in recordings])
    for rec, r in zip(recordings, indices):
        if r is None:
            continue
        classes = rec.classes if rec.classes is not None else np.ones(len(rec.positions), np.int64)
        rows += [(str(r), float(p), int(c)) for p, c in zip(rec.positions, classes)]
    return pd.DataFrame(rows, columns=["recording", "position", "class"])


# --- settings and report -------------------------------------------------------------------


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
        from pipeline.evaluate import format_report

        lines = [f"model: {self.model} ({self.architecture}), {self.n_windows} training windows, {self.seconds:.0f} s"]
        lines += [f"skipped: {p}" for p in self.problems]
        if self.metrics:
            lines.append(format_report(self.metrics))
        return "\n".join(lines)


# --- the model as a function of windows ------------------------------------------------------


class Predictor:
    """A trained model as a function ``windows (b, 130, 20, 1) -> probabilities (b, K+1)``.

    Column 0 is P(not call), columns 1..K the classes, whatever the architecture: a one-stage
    network's sigmoid head; a two-stage model's detector (P(call)) and classifier; a hybrid's
    boosters on the network's embedding.

    ``booster_gate`` (hybrids only) is the fast path of the boosters: the network computes
    its embedding and its own head in one pass, and the boosters score only the windows
    whose head gives a call score ``1 - P(not call)`` of at least ``booster_gate``; the other
    windows keep the head's probabilities (all far below any detection threshold). 0 runs
    the boosters on every window (the dense reference).
    """

    def __init__(self, architecture: str, networks: dict, boosters: dict | None = None, *, booster_gate: float = 0.0):
        from pipeline.model.registry import get_architecture

        self.arch = get_architecture(architecture)
        self.networks = networks
        self.boosters = boosters
        self.booster_gate = float(booster_gate)
        if self.arch.hybrid:
            self._embed = embedding_model(networks[self.arch.network_rows[0]])
            self._embed_and_head = embedding_and_head(networks[self.arch.network_rows[0]])

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        if len(windows) == 0:
            return np.zeros((0, self.n_outputs), np.float32)
        n = len(windows)
        size = padded_batch_size(n)
        if size != n:  # a few fixed batch shapes: TensorFlow/oneDNN caches one plan per shape
            windows = np.concatenate([windows, np.zeros((size - n, *windows.shape[1:]), windows.dtype)])
        return self._probabilities(windows)[:n]

    def _probabilities(self, windows: np.ndarray) -> np.ndarray:
        if self.arch.hybrid:
            if self.booster_gate <= 0:
                return booster_probabilities(self.boosters, self._embed(windows, training=False).numpy())
            embedding, head = (x.numpy() for x in self._embed_and_head(windows, training=False))
            probs = head.astype(np.float32)
            use = (1.0 - probs[:, 0]) >= self.booster_gate
            if use.any():
                probs[use] = booster_probabilities(self.boosters, embedding[use])
            return probs
        if self.arch.two_stage:
            detector = self.networks[self.arch.detector_row](windows, training=False).numpy()
            classes = self.networks[self.arch.classifier_row](windows, training=False).numpy()
            return np.column_stack([detector[:, 0], classes]).astype(np.float32)
        return self.networks[self.arch.network_rows[0]](windows, training=False).numpy().astype(np.float32)

    @classmethod
    def from_bundle(cls, bundle, *, booster_gate: float = 0.0) -> "Predictor":
        """The predictor of a loaded :class:`~pipeline.model.bundle.ModelBundle`."""
        networks = {row: bundle.network(row) for row in bundle.spec.network_rows}
        return cls(bundle.architecture, networks, bundle.boosters() or None, booster_gate=booster_gate)

    @property
    def n_outputs(self) -> int:
        if self.arch.hybrid:
            return len(self.boosters)
        return int(self.networks[self.arch.network_rows[-1]].output_shape[-1]) + int(self.arch.two_stage)


def padded_batch_size(n: int, smallest: int = 64) -> int:
    """The batch shape ``n`` windows are scored in: the next power of two, at least ``smallest``.

    TensorFlow (oneDNN) builds and caches a plan for every input shape it meets; the fast path
    scores batches of every size, and without padding a worker's memory grew past 2 GB.
    """
    return max(int(smallest), 1 << max(int(n) - 1, 0).bit_length())


def embedding_model(network):
    """The network cut at its layer ``"embedding"`` (its last hidden layer)."""
    import keras

    return keras.Model(network.input, network.get_layer("embedding").output, name=f"{network.name}_embedding")


def embedding_and_head(network):
    """The network with two outputs: its embedding and its own head, in one pass."""
    import keras

    outputs = [network.get_layer("embedding").output, network.output]
    return keras.Model(network.input, outputs, name=f"{network.name}_embedding_and_head")


def inference_network(network):
    """A copy of a trained network without its optimizer state (a third of the file size)."""
    import keras

    copy = keras.Model.from_config(network.get_config())
    copy.set_weights(network.get_weights())
    return copy


def booster_names(n_outputs: int) -> list[str]:
    return [f"output_{j}" for j in range(n_outputs)]


def booster_probabilities(boosters: dict, embeddings: np.ndarray) -> np.ndarray:
    """Binary relevance: one booster per output column, in order."""
    return np.column_stack([b.inplace_predict(embeddings) for b in boosters.values()]).astype(np.float32)


# --- 4. networks -------------------------------------------------------------------------------


def network_targets(arch, row: str, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which samples a network learns from, and its targets.

    A one-stage network learns (not call, classes) from every window; a detector the one-hot
    (not call, call) from every window; a classifier the classes of the call windows only.
    """
    if arch.two_stage and row == arch.detector_row:
        not_call = targets[:, :1]
        return np.ones(len(targets), bool), np.hstack([not_call, 1 - not_call]).astype(np.float32)
    if arch.two_stage:
        return targets[:, 0] < 0.5, targets[:, 1:]
    return np.ones(len(targets), bool), targets


def fit_networks(arch, networks, params_by_row, cube_path, train, validation, settings: TrainSettings, progress):
    """Train each network of the model, streaming windows from the cube; their histories."""
    import keras

    from pipeline.model.registry import compile_network
    from pipeline.windows import WindowSequence

    histories = {}
    for row, network in networks.items():
        params = params_by_row[row]
        compile_network(network, params)
        use, y = network_targets(arch, row, train.targets)
        val_use, val_y = network_targets(arch, row, validation.targets)
        batch = int(params.get("batch_size", 320))
        data = WindowSequence(cube_path, (train.columns[use], y[use]), batch_size=batch, shuffle=True, seed=settings.seed)
        val = WindowSequence(cube_path, (validation.columns[val_use], val_y[val_use]), batch_size=batch, shuffle=False)
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=int(params.get("patience", 20)),
            min_delta=float(params.get("min_delta", 0.0)),
            restore_best_weights=True,
        )
        epochs = int(params.get("epochs", 200)) if settings.epochs is None else settings.epochs
        history = network.fit(
            data, validation_data=val if len(val) else None, epochs=epochs, callbacks=[stop] if len(val) else [],
            verbose=1 if progress else 0,
        )  # fmt: skip
        histories[row] = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return histories


# --- 5. hybrids: embeddings with Dask, XGBoost with xgboost.dask -------------------------------


_EMBEDDERS: dict = {}


def _embedder(model_path: str):
    """The embedding model, loaded once per worker process (cached by path)."""
    if model_path not in _EMBEDDERS:
        import keras

        _EMBEDDERS.clear()
        _EMBEDDERS[model_path] = keras.models.load_model(model_path, safe_mode=True, compile=False)
    return _EMBEDDERS[model_path]


def embed_windows(model_path: str, cube_path: str, columns: np.ndarray) -> np.ndarray:
    """Embeddings (n, d) float32 of the windows starting at ``columns`` (one Dask task)."""
    import zarr

    from pipeline.windows import read_windows

    array = zarr.open_array(f"{cube_path}/spectrogram", mode="r")
    return _embedder(model_path).predict(read_windows(array, columns), verbose=0, batch_size=1024).astype(np.float32)


def embeddings(client, model_path: str, cube_path: str, columns: np.ndarray, n_dims: int, batch: int = 4096):
    """A Dask array (n, n_dims) of the windows' embeddings, computed on the cluster."""
    import dask.array as da

    parts = []
    for start in range(0, len(columns), batch):
        part = columns[start : start + batch]
        future = client.submit(embed_windows, model_path, cube_path, part, pure=False)
        parts.append(da.from_delayed(future, shape=(len(part), n_dims), dtype=np.float32))
    return da.concatenate(parts) if parts else da.zeros((0, n_dims), np.float32)


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights that give both values of a binary label the same total weight."""
    positive = labels > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.ones(len(labels), np.float32)
    n = len(labels)
    return np.where(positive, n / (2 * n_pos), n / (2 * n_neg)).astype(np.float32)


def fit_boosters(client, features, targets: np.ndarray, xgb_params: dict, seed: int) -> dict:
    """One XGBoost booster per output column (binary relevance), trained with ``xgboost.dask``.

    Binary relevance rather than one multi-output model: each output gets its own balanced
    sample weights (rare groups are not drowned by "not call"), as the seed did.
    """
    import dask.array as da
    from xgboost import dask as dxgb

    params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "max_depth": int(xgb_params.get("max_depth", 15)),
        "eta": float(xgb_params.get("eta", 0.197)),
        "gamma": float(xgb_params.get("gamma", 0.001)),
        "subsample": float(xgb_params.get("subsample", 0.9)),
        "scale_pos_weight": float(xgb_params.get("scale_pos_weight", 1.0)),
        "min_child_weight": float(xgb_params.get("min_child_weight", 1)),
        "seed": seed,
        "verbosity": 0,
    }
    rounds = int(xgb_params.get("n_estimators", 2000))
    features = features.persist()
    chunks = features.chunks[0]
    boosters = {}
    for j, name in enumerate(booster_names(targets.shape[1])):
        label = da.from_array(targets[:, j], chunks=chunks)
        weight = da.from_array(balanced_weights(targets[:, j]), chunks=chunks)

        def fit():
            matrix = dxgb.DaskDMatrix(client, features, label, weight=weight)
            return dxgb.train(client, params, matrix, num_boost_round=rounds)["booster"]

        boosters[name] = retry_after_worker_loss(client, fit, what=f"XGBoost booster {name}")
    return boosters


def retry_after_worker_loss(client, fit, *, what: str, attempts: int = 3):
    """``fit()``, run again (up to ``attempts`` times in all) when a worker left the cluster
    while it ran.

    ``xgboost.dask`` cannot survive the loss of a worker during training ("resilience is not
    yet supported"): its collective fails. Dask recomputes the lost partitions of the data on
    the remaining (or restarted) workers, so training the booster again from the start gives
    a complete booster; an error while the workers stayed the same is raised at once.
    """
    for attempt in range(1, attempts + 1):
        before = set(client.scheduler_info()["workers"])
        try:
            return fit()
        except Exception as exc:
            lost = before - set(client.scheduler_info()["workers"])
            worker_died = bool(lost) or "worker" in str(exc).lower() and "died" in str(exc).lower()
            if not worker_died:
                raise
            if attempt == attempts:
                raise TrainingError(
                    f"{what}: a Dask worker was lost {attempts} times while training it; "
                    "check the workers' memory and run the same command again"
                ) from exc
            client.wait_for_workers(1, timeout=300)


# --- 6. detections on held-out recordings, thresholds ------------------------------------------


def detect_recordings(predictor: Predictor, cube, recordings, classes, thresholds=None) -> pd.DataFrame:
    """Detection events of the annotated recordings (``recording`` = cube index as a string)."""
    from pipeline.detect import detect_recording
    from pipeline.sampling import match_recordings

    thresholds = thresholds or {"detection": 0.0, **{c: 0.0 for c in classes}}
    tables = []
    indices, _ = match_recordings(cube, [rec.file for rec in recordings])
    for r in indices:
        if r is None:
            continue
        one = cube.batml.recording(r)
        spectrogram = one["spectrogram"].values.astype(np.float32)
        events = detect_recording(predictor, spectrogram, one["offset"].values, classes, thresholds)
        tables.append(events.assign(recording=str(r)))
    columns = ["recording", "time", "score", *[f"prob_{c}" for c in classes]]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)


def tune(predictor, cube, recordings, classes) -> dict[str, float]:
    """Per-class and detection thresholds maximising F1 on validation recordings."""
    from pipeline.evaluate import tune_thresholds

    calls = calls_table(recordings, cube)
    detections = detect_recordings(predictor, cube, recordings, classes)
    if calls.empty or detections.empty:
        return {"detection": 0.5, **{c: 0.5 for c in classes}}
    return tune_thresholds(calls, detections, classes)


def evaluate_model(predictor, cube, recordings, classes, thresholds) -> dict:
    """The seed's and the proper metrics of a model on annotated recordings."""
    from pipeline.evaluate import evaluate

    calls = calls_table(recordings, cube)
    detections = detect_recordings(predictor, cube, recordings, classes)
    return evaluate(calls, detections, classes, thresholds)


# --- 7. hard negative mining ---------------------------------------------------------------------


def hard_examples(predictor, cube, recordings, classes, samples, tolerance: float = 0.010):
    """The seed's hard negative mining on the training recordings.

    Detections above 0.5 that match no call become negatives; calls no detection found
    become extra positives (their shifted windows once more).
    """
    from pipeline.evaluate import call_events, match_detections
    from pipeline.sampling import SamplingSettings, Samples, cube_column_steps, positive_windows

    calls = calls_table(recordings, cube)
    detections = detect_recordings(predictor, cube, recordings, classes)
    if calls.empty:
        return samples
    matches = match_detections(calls, detections, tolerance) if len(detections) else np.zeros(0, np.int64)
    n_out = samples.n_outputs
    starts, n_columns, steps = cube["start"].values, cube["n_columns"].values, cube_column_steps(cube)
    false = detections[(matches < 0) & (detections["score"].to_numpy() > 0.5)]
    recording = false["recording"].astype(np.int32).to_numpy()
    negatives = Samples(
        columns=starts[recording] + false["column"].to_numpy(np.int64),
        recording=recording,
        targets=np.tile(np.eye(1, n_out, 0, dtype=np.float32), (len(false), 1)),
    )
    events = call_events(calls)
    missed = events.iloc[np.setdiff1d(np.arange(len(events)), matches[matches >= 0])]
    parts = [samples, negatives]
    missed_calls = calls.merge(missed[["recording", "position"]], on=["recording", "position"])
    for r_text, group in missed_calls.groupby("recording"):
        r = int(r_text)
        local, targets = positive_windows(
            group["position"].to_numpy(), group["class"].to_numpy(), n_out - 1, steps[r], int(n_columns[r]),
            SamplingSettings(),
        )  # fmt: skip
        parts.append(Samples(starts[r] + local, np.full(len(local), r, np.int32), targets))
    return Samples.concatenate(parts)


# --- the whole job ------------------------------------------------------------------------------


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
    (see :func:`pipeline.model.bundle.save_bundle`).
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
        if pretrained is not None:  # kept as they are; a hybrid's boosters are still trained
            networks, histories = dict(pretrained), {}
        else:
            networks = build_networks(arch, len(classes), rows)
            histories = fit_networks(arch, networks, rows, str(cube_path), train_samples, val_samples, settings, progress)
        boosters = None
        if arch.hybrid:
            boosters = _fit_hybrid(client, arch, networks, cube_path, train_samples, booster_params, settings)
        predictor = Predictor(arch.name, networks, boosters)
    report.n_windows = len(train_samples)
    thresholds = tune(predictor, cube, val_recs or fit_recs, classes)
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
            "pretrained_networks": pretrained is not None,
            "histories": histories,
            "cube": str(cube_path),
            "seconds": time.perf_counter() - t0,
        },
        metrics=report.metrics,
        params={**rows, **({"xgboost": booster_params} if arch.hybrid else {})},
        source=source,
        licence=licence,
    )
    report.seconds = time.perf_counter() - t0
    if report.metrics:
        _write_report(out, report.metrics)
    return report


def _fit_hybrid(client, arch, networks, cube_path, samples, booster_params, settings) -> dict:
    network = networks[arch.network_rows[0]]
    embed = embedding_model(network)
    with tempfile.TemporaryDirectory(prefix="batml-embedding-", dir=Path(cube_path).parent) as tmp:
        model_path = str(Path(tmp) / "embedding.keras")
        embed.save(model_path)
        features = embeddings(client, model_path, str(cube_path), samples.columns, int(embed.output_shape[-1]))
        return fit_boosters(client, features, samples.targets, booster_params, settings.seed)


def _write_report(out: Path, metrics: dict) -> None:
    from pipeline.evaluate import format_report

    for name, text in (("evaluation.json", json.dumps(metrics, indent=2)), ("evaluation.txt", format_report(metrics))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def train(
    dataset: str | os.PathLike,
    audio_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    settings: TrainSettings | None = None,
    cube: str | os.PathLike | None = None,
    run_settings: Settings | None = None,
    trust_npz: bool = False,
    cluster: str | None = "local",
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
    dataset : the seed's ``.npz`` or a CSV of calls
    audio_dir : folder of the recordings the annotations name (``<audio_dir>/<file>.wav``)
    out : the model bundle directory to write
    settings : what to train (:class:`TrainSettings`)
    cube : spectrogram cube to reuse or create (default: ``<out>.cube.zarr``)
    run_settings : spectrogram and ingest settings
    trust_npz : allow pickle when reading the ``.npz`` (only for files you made yourself)
    cluster, client, n_workers : where to run (see :func:`pipeline.distributed.connect`)
    progress : progress bars
    pretrained, source, licence : see :func:`train_model`
    """
    from pipeline.distributed import connect
    from pipeline.ingest import ingest

    settings = settings or TrainSettings()
    run_settings = run_settings or Settings()
    out = Path(out)
    annotations = read_annotations(dataset, trust_npz=trust_npz)
    check_writable(out)  # before hours of training, not after
    cube = Path(cube) if cube is not None else out.with_name(out.name + ".cube.zarr")
    with connect(cluster, client=client, n_workers=n_workers, quiet=not progress) as client:
        _complete_cube(ingest(audio_dir, cube, settings=run_settings, client=client, progress=progress))
        return train_model(
            annotations, cube, settings, client=client, spectrogram_settings=run_settings.spectrogram,
            out=out, progress=progress, audio_dir=audio_dir, pretrained=pretrained, source=source,
            licence=licence,
        )  # fmt: skip


def check_writable(out: Path) -> None:
    """Refuse a model bundle path that cannot be written (read-only folder, no permission).

    The bundle is built in a sibling directory and renamed into place, so the folder that
    holds ``out`` (or its nearest existing parent) must take a new directory: that is tried
    for real (a probe created and removed), which also holds for root, whom file modes do
    not stop, and for read-only mounts.
    """
    out = Path(out)
    existing = next((p for p in out.parents if p.exists()), Path("."))
    try:
        probe = Path(tempfile.mkdtemp(prefix=".batml-write-test-", dir=existing))
    except OSError as exc:
        raise TrainingError(f"{out}: cannot write the model bundle there ({exc.strerror or exc})") from None
    probe.rmdir()


def _complete_cube(report) -> None:
    """Refuse to go on with a cube some chunks of which could not be written."""
    if not report.complete:
        raise TrainingError(
            f"{report.cube}: {len(report.errors)} chunk(s) of the cube could not be written "
            f"({report.errors[0]}); run the same command again to finish it"
        )


def model_on_annotations(
    model: str | os.PathLike,
    dataset: str | os.PathLike,
    audio_dir: str | os.PathLike,
    *,
    split: str = "test",
    cube: str | os.PathLike | None = None,
    trust_npz: bool = False,
    cluster: str | None = "local",
    client=None,
    n_workers: int | None = None,
    progress: bool = True,
):
    """A model bundle, the cube of the annotated recordings made with its settings, the
    recordings of ``split`` (``"test"``: the test split, all recordings if none; ``"train"``;
    ``"all"``) that can be used, and one line per other one saying why (as
    :func:`usable_recordings`: not found, rejected, or a link outside ``audio_dir``): what
    ``batml evaluate`` and ``batml plot pr|confusion`` run the model on.
    """
    from pipeline.distributed import connect
    from pipeline.ingest import ingest
    from pipeline.io.cube import open_cube
    from pipeline.model.bundle import load_bundle

    bundle = load_bundle(model)
    annotations = read_annotations(dataset, trust_npz=trust_npz)
    recordings = {
        "test": annotations.test or annotations.train,
        "train": annotations.train,
        "all": annotations.train + annotations.test,
    }[split]
    cube = Path(cube) if cube is not None else Path(model).with_name(Path(model).name + ".cube.zarr")
    with connect(cluster, client=client, n_workers=n_workers, quiet=not progress) as client:
        _complete_cube(
            ingest(audio_dir, cube, settings=Settings(spectrogram=bundle.spectrogram), client=client, progress=progress)
        )
    cube_ds = open_cube(cube)
    if cube_ds.attrs["fingerprint"] != bundle.fingerprint:
        raise TrainingError(
            f"{cube}: spectrogram fingerprint {cube_ds.attrs['fingerprint']} differs from the model's {bundle.fingerprint}"
        )
    usable, problems = usable_recordings(recordings, cube_ds, audio_dir)
    return bundle, cube_ds, usable, problems


def evaluate_saved_model(
    model: str | os.PathLike,
    dataset: str | os.PathLike,
    audio_dir: str | os.PathLike,
    *,
    cube: str | os.PathLike | None = None,
    trust_npz: bool = False,
    cluster: str | None = "local",
    client=None,
    n_workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate a model bundle on the test split (all recordings if none): ``batml evaluate``.

    The result is also written next to the model (``evaluation.json``, ``evaluation.txt``);
    its ``"skipped"`` lists the annotated recordings left out, each with the reason.
    """
    bundle, cube_ds, recordings, problems = model_on_annotations(
        model, dataset, audio_dir, cube=cube, trust_npz=trust_npz, cluster=cluster, client=client,
        n_workers=n_workers, progress=progress,
    )  # fmt: skip
    predictor = Predictor.from_bundle(bundle)
    metrics = evaluate_model(predictor, cube_ds, recordings, bundle.classes, bundle.thresholds)
    metrics["skipped"] = problems
    _write_report(Path(model), metrics)
    return metrics
