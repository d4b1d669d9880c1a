"""The reference system's published networks as batml model bundles.

The reference system (Dierckx, Beauvois & Nijssen, "Detection and Multi-label Classification
of Bats", IDA 2022; repository luciledierckx/batML) published networks trained on labelled
European bat calls (Natagora's recordings and the Bat Detective data), each as a ``.npy``
holding a numpy object array of float32 arrays in Keras ``get_weights()`` order, and per-class
thresholds as a ``.npy`` of 8 integers (percent). Their licence: research use only,
non-commercial; a bundle made from them says so in its manifest (``"licence"``, ``"source"``).

What the published networks are, checked against the reference's code (``cnn_helper.py``,
``cls_cnn8.py``, ``cls_cnn2.py``, ``cls_hybrid_cnn.py``, ``spectrogram.py``):

* The same layers, in the same order, as batml's :func:`pipeline.model.cnn.build_cnn` with the
  ``cnn_8`` row (three blocks of 48 4x4 ``same`` convolutions with ReLU and a 2x2 max-pool,
  dropout, flatten, Dense 320 ReLU, dropout, Dense 8 sigmoid: 569,048 values) and the
  ``cnn_2`` row (four blocks of 48 3x3, Dense 384 ReLU, Dense 2 softmax: 211,442 values).
  Both were built with TensorFlow's Keras, channels last: convolution kernels are
  ``(height, width, in, out)`` and the flatten runs over (row, column, channel), as Keras 3
  does, so the arrays load as they are. The hybrid's embedding is the output of its Dense 320
  layer (after the ReLU), batml's layer ``"embedding"``.
* Outputs ``not call, Barbarg, Envsp, Myosp, Pip35, Pip50, Plesp, Rhisp``; the ``cnn2``
  detector's two softmax outputs are ``not call, call``.
* **The input's frequency axis is reversed.** The reference flipped its spectrogram upside
  down (``np.flipud``): row 0 of its 130x20 window is the highest frequency, batml's the
  lowest. A converted network therefore starts with an exact reversal of the frequency axis
  (a fixed 130x130 permutation, layer ``"frequency_flip"``), so that it reads batml's windows
  as the reference's network read its own. Fed the same frequencies, the two agree to float
  tolerance (``tests/test_reference_models.py``); fed its own windows upside down, the
  ``cnn8`` network's detection AP on the real annotated recordings falls from 0.57 to 0.25.
* **The log scaling used the time-expanded rate.** The reference assumed recordings
  time-expanded x10 and, for real-time audio, divided the rate by 10 before computing the
  spectrogram (``run_classifier.py``): the window length in real time is batml's, but the
  ``2 / (rate * sum(hann**2))`` factor of the log scaling is 10 times batml's. Converted
  bundles carry ``log_scale_expansion = 10`` in their spectrogram settings (their own
  fingerprint, so their cubes are never mixed with others): the ``cnn8`` network's detection
  AP is 0.569 with it and 0.417 without on the Tadarida sample (719 bat calls), 0.839 and
  0.689 on a simulated test split (``benchmarks/reference_models.py``).
* The reference zoomed each 260x40 window by 0.5 with a linear spline
  (``scipy.ndimage.zoom(..., order=1)``, no prefilter), batml averages 2x2 blocks of the whole
  spectrogram once: with these weights the difference is within the noise of the
  measurement and goes either way (detection AP 0.573 against 0.569 on the Tadarida sample,
  0.835 against 0.839 on the simulated one, 0.571 against 0.606 on the 27 real annotated
  calls; top-1 group accuracy within 1.1 points), so batml's zoom is kept. The other steps agree: Hann window of
  ``int(0.002322 * real rate)`` samples, 75 % overlap, power, FFT bins 11..270 with zeros
  above Nyquist, 16-bit sample units, per-frequency means subtracted separately over frames
  whose mean log-magnitude exceeds 0.5 and the others, clipped at 0, Gaussian smoothing of
  sigma 1 (the reference repeated the edge values, batml reflects them: only the first and
  last frame differ); a window starts at its call.

:func:`network_bundle` makes a ``cnn8`` bundle (the ``cnn8`` network, or the hybrid's CNN with
its own 8-output head) or a detector bundle (the ``cnn2`` detector, as a one-stage model whose
single class is ``"bat"``: the published ``cnn2`` classifier is not reachable, and a ``cnn2``
bundle needs both networks). :func:`hybrid_bundle` makes a ``hybrid_cnn_xgboost`` bundle from
the hybrid's CNN, with boosters trained by batml on its embeddings of annotated recordings
(the published boosters are not reachable either).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import REFERENCE_GROUPS, Settings, SpectrogramSettings
from pipeline.io.restricted_pickle import read_npy

if TYPE_CHECKING:
    import keras

#: Where the reference system and its networks are published.
REFERENCE_REPOSITORY = "luciledierckx/batML"
REFERENCE_URL = "https://github.com/luciledierckx/batML"
REFERENCE_COMMIT = "7e6709e1971e45c3cf4f85a3045d68a1b030d32b"
REFERENCE_PAPER = (
    "Dierckx, Beauvois & Nijssen, Detection and Multi-label Classification of Bats, IDA 2022, "
    "LNCS, pp. 53-65"
)

#: The terms of the reference's code, data and networks (its LICENSE.txt), recorded in the
#: manifest of every bundle made from them.
REFERENCE_LICENCE = "research use only, non-commercial"
REFERENCE_LICENCE_NOTE = (
    "the reference system's code, audio, annotations and trained networks are available for "
    "research purposes only, i.e. non-commercial use (LICENSE.txt of luciledierckx/batML); "
    "for any other use contact the authors. A model made from them carries these terms."
)

#: The published files (``data/models/`` at :data:`REFERENCE_COMMIT`), by SHA-256.
PUBLISHED_FILES = {
    "7ec3da1c9fa61e5e2d89c77de7ba92c2c23248fffea31e3d020a51c5aba8d393":
        "data/models/25_05_21_12_12_25_classif_cnn8_hnm1_weights.npy",
    "8461d4046263abbf612bdf2acca01cf48e438436658c88b22d46e80c3f68d326":
        "data/models/25_05_21_12_12_25_classif_cnn8_hnm1_thresholds.npy",
    "fa9b29b667ba9d5a105baaab7cdca858fce9b24af64695047dbe8427493b3777":
        "data/models/02_06_21_09_32_04_features_hybrid_cnn_xgboost_hnm2_weights.npy",
    "0f5dc75f0ed2f9dacb3763837ab999a15355a9a3f179665772053bce6e74fab4":
        "data/models/02_06_21_09_32_04_classif_hybrid_cnn_xgboost_hnm2_thresholds.npy",
    "79a2823dd6bc7e9282d047b3481f9d47befd5021bb2819388d7fe03e702a6161":
        "data/models/25_05_21_15_09_28_detect_cnn2_hnm0_weights.npy",
    "221a864e00408e69c4fda69aa5fd6856c2618c0f5d8ab3ab23da792b632624a6":
        "data/models/25_05_21_15_09_28_classif_cnn2_hnm0_thresholds.npy",
}  # fmt: skip

#: The reference's outputs, in order (its thresholds files follow the same order).
REFERENCE_OUTPUTS = ("not call", *REFERENCE_GROUPS)

#: The spectrogram settings the reference's networks were trained on, in batml's terms.
REFERENCE_SPECTROGRAM = SpectrogramSettings(log_scale_expansion=10.0)

#: The single class of a detector bundle.
DETECTOR_CLASS = "bat"

#: The reference had no detection threshold: a class peak counted when it beat the not-call
#: probability of its frame, which for batml's events (call score ``1 - P(not call)``) is a
#: score above 0.5. Converted bundles take that as their detection threshold.
DETECTION_THRESHOLD = 0.5

#: Layer name of the frequency reversal a converted network starts with.
FLIP_LAYER = "frequency_flip"


class ReferenceModelError(ValueError):
    """A reference weights or thresholds file that cannot be converted; one line naming it."""


@dataclass(frozen=True)
class ReferenceKind:
    """One kind of published network and how batml builds it.

    Parameters
    ----------
    name : str
        ``"cnn8"`` (8 sigmoid outputs: the ``cnn8`` network and the hybrid's CNN) or
        ``"detector"`` (the ``cnn2`` detector: 2 softmax outputs).
    row : str
        The ``networks.csv`` row batml builds it from.
    n_outputs : int
    activation : str
    """

    name: str
    row: str
    n_outputs: int
    activation: str


KINDS = {
    "cnn8": ReferenceKind("cnn8", "cnn_8", len(REFERENCE_OUTPUTS), "sigmoid"),
    "detector": ReferenceKind("detector", "cnn_2", 2, "softmax"),
}

#: The model types :func:`convert_reference` makes.
MODEL_TYPES = ("cnn8", "hybrid_cnn_xgboost", "detector")


# ---------------------------------------------------------------------------------------------
# Reading


def _refusal(path: Path):
    def refuse(module: str, name: str) -> ReferenceModelError:
        return ReferenceModelError(
            f"{path}: holds a pickled {module}.{name}, and unpickling it could run code; only "
            "plain numpy arrays are read from reference weights"
        )

    return refuse


def read_reference_weights(path: str | os.PathLike) -> list[np.ndarray]:
    """The weight arrays of a reference network, read without pickle's general loader.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy`` holding a 1-D numpy object array of float arrays (Keras ``get_weights()``
        order), as the reference saved them (pickled by an old numpy: the unpickler allows
        numpy's array rebuilders and latin-1 ``_codecs.encode`` only,
        :mod:`pipeline.io.restricted_pickle`).

    Returns
    -------
    list of numpy.ndarray
        float32 arrays, in the file's order.

    Raises
    ------
    ReferenceModelError
        One line naming the file: missing, not an ``.npy``, a pickle naming anything but
        numpy's array rebuilders, not a 1-D object array, or an element that is not a finite
        numeric array.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            array = read_npy(fh, _refusal(path))
    except ReferenceModelError:
        raise
    except FileNotFoundError:
        raise ReferenceModelError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ReferenceModelError(f"{path}: a folder, not a weights .npy") from None
    except Exception as exc:  # numpy and pickle raise many kinds on a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReferenceModelError(f"{path}: not a readable .npy of weights ({reason})") from None
    if array.dtype != object or array.ndim != 1:
        raise ReferenceModelError(
            f"{path}: expected a 1-D object array of weight arrays, found a {array.ndim}-D "
            f"{array.dtype} array"
        )
    weights = []
    for i, item in enumerate(array):
        if not isinstance(item, np.ndarray) or item.dtype.kind not in "fiu":
            raise ReferenceModelError(f"{path}: element {i} is a {type(item).__name__}, not a numeric array")
        if not np.all(np.isfinite(item)):
            raise ReferenceModelError(f"{path}: element {i} holds NaN or infinite weights")
        weights.append(np.ascontiguousarray(item, dtype=np.float32))
    return weights


def read_reference_thresholds(path: str | os.PathLike) -> np.ndarray:
    """The per-output thresholds of a reference model, in percent.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy`` of 8 integers 0..100, one per output of :data:`REFERENCE_OUTPUTS` (the
        first, for "not call", is unused by the reference). Read without pickle.

    Returns
    -------
    numpy.ndarray
        int64, shape ``(8,)``.

    Raises
    ------
    ReferenceModelError
        One line naming the file and the reason.
    """
    path = Path(path)
    try:
        values = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ReferenceModelError(f"{path}: file not found") from None
    except Exception as exc:  # an object array (pickle) or a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReferenceModelError(f"{path}: not a plain .npy of thresholds ({reason})") from None
    if not isinstance(values, np.ndarray) or values.shape != (len(REFERENCE_OUTPUTS),):
        shape = getattr(values, "shape", None)
        raise ReferenceModelError(
            f"{path}: expected {len(REFERENCE_OUTPUTS)} thresholds (one per output: "
            f"{', '.join(REFERENCE_OUTPUTS)}), found shape {shape}"
        )
    if values.dtype.kind not in "fiu" or not np.all(np.isfinite(values)):
        raise ReferenceModelError(f"{path}: thresholds must be finite numbers, not {values.dtype}")
    if np.any((values < 0) | (values > 100)):
        raise ReferenceModelError(f"{path}: thresholds are percentages and must lie in 0..100")
    return values.astype(np.int64) if values.dtype.kind in "iu" else values.astype(np.float64)


def thresholds_from_percent(
    percent: Sequence[float], *, detection: float = DETECTION_THRESHOLD
) -> dict[str, float]:
    """A bundle's thresholds from the reference's percentages.

    Parameters
    ----------
    percent : sequence of 8 numbers
        One per output of :data:`REFERENCE_OUTPUTS`, in percent; the first ("not call") is
        not a threshold in the reference and is not used.
    detection : float
        The bundle's detection threshold (:data:`DETECTION_THRESHOLD`).

    Returns
    -------
    dict of str to float
        ``{"detection": detection, "Barbarg": percent[1] / 100, ...}``.
    """
    percent = np.asarray(percent, dtype=np.float64)
    if percent.shape != (len(REFERENCE_OUTPUTS),):
        raise ValueError(f"expected {len(REFERENCE_OUTPUTS)} thresholds, got shape {percent.shape}")
    return {"detection": float(detection), **{c: float(p) / 100.0 for c, p in zip(REFERENCE_GROUPS, percent[1:])}}


def file_source(path: str | os.PathLike) -> dict[str, Any]:
    """Where a reference file came from: name, SHA-256 and, when it is one of the published
    files, its path in the reference's repository."""
    path = Path(path)
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    record = {"file": path.name, "sha256": digest}
    if digest in PUBLISHED_FILES:
        record["published_as"] = PUBLISHED_FILES[digest]
    return record


def reference_source(weights: str | os.PathLike, thresholds: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest's ``"source"`` of a bundle made from reference files."""
    return {
        "system": REFERENCE_PAPER,
        "repository": REFERENCE_REPOSITORY,
        "url": REFERENCE_URL,
        "commit": REFERENCE_COMMIT,
        "weights": file_source(weights),
        "thresholds": file_source(thresholds) if thresholds is not None else None,
        "licence": REFERENCE_LICENCE,
        "licence_note": REFERENCE_LICENCE_NOTE,
    }


# ---------------------------------------------------------------------------------------------
# Networks


def _core_network(kind: ReferenceKind) -> keras.Model:
    """batml's own network for a kind (packaged hyperparameters), untrained."""
    from pipeline.model.cnn import build_cnn
    from pipeline.model.params import load_params

    return build_cnn(kind.n_outputs, load_params(kind.row), activation=kind.activation, name=kind.row)


def weight_shapes(kind: str) -> list[tuple[int, ...]]:
    """The shapes, in ``get_weights()`` order, of batml's network for a kind."""
    return [tuple(w.shape) for w in _core_network(KINDS[kind]).get_weights()]


def identify_kind(weights: Sequence[np.ndarray]) -> str:
    """``"cnn8"`` or ``"detector"``: the kind whose batml network has these weight shapes.

    Raises
    ------
    ValueError
        When no kind matches; the message gives both shapes.
    """
    shapes = [tuple(w.shape) for w in weights]
    for name in KINDS:
        if weight_shapes(name) == shapes:
            return name
    found = ", ".join("x".join(map(str, s)) for s in shapes)
    raise ValueError(
        f"its {len(shapes)} arrays ({found}; {sum(int(np.prod(s)) for s in shapes):,} values) match "
        "neither batml's cnn_8 network (569,048 values) nor its cnn_2 detector (211,442)"
    )


def reversal(n: int) -> np.ndarray:
    """The ``n x n`` float32 matrix that reverses a vector (ones on the anti-diagonal)."""
    return np.eye(n, dtype=np.float32)[::-1].copy()


def reference_network(weights: Sequence[np.ndarray], kind: str | None = None) -> keras.Model:
    """A reference network as a batml network that reads batml's windows.

    Parameters
    ----------
    weights : sequence of numpy.ndarray
        The reference's arrays, Keras ``get_weights()`` order (:func:`read_reference_weights`).
    kind : {"cnn8", "detector"}, optional
        Default: from the shapes (:func:`identify_kind`).

    Returns
    -------
    keras.Model
        Input ``(130, 20, 1)`` windows, lowest frequency first (batml's); the frequency axis
        is reversed (layers ``frequency_flip_in``, :data:`FLIP_LAYER`, ``frequency_flip_out``,
        a fixed permutation) and fed to batml's own layers for the row (``conv_1`` ...
        ``embedding``, ``output``), which hold the reference's weights. Named after the row
        (``cnn_8`` or ``cnn_2``).

    Raises
    ------
    ValueError
        When the shapes match no kind, or not the one asked for.
    """
    import keras

    if kind is None:
        kind = identify_kind(weights)
    spec = KINDS[kind]
    core = _core_network(spec)
    expected = [tuple(w.shape) for w in core.get_weights()]
    shapes = [tuple(np.shape(w)) for w in weights]
    if shapes != expected:
        raise ValueError(f"its arrays have shapes {shapes}; batml's {spec.row} network needs {expected}")
    core.set_weights([np.asarray(w, dtype=np.float32) for w in weights])
    rows, columns, channels = core.input_shape[1:]
    inputs = keras.Input(shape=(rows, columns, channels), name="spectrogram")
    x = keras.layers.Permute((2, 3, 1), name=f"{FLIP_LAYER}_in")(inputs)  # (columns, channels, rows)
    flip = keras.layers.Dense(rows, use_bias=False, trainable=False, name=FLIP_LAYER)
    x = flip(x)
    flip.set_weights([reversal(rows)])  # exact: each output is one input times 1, plus zeros
    x = keras.layers.Permute((3, 1, 2), name=f"{FLIP_LAYER}_out")(x)  # back to (rows, columns, channels)
    copies = []
    for layer in core.layers[1:]:  # batml's layers, in order (fresh copies: each called once)
        copies.append((type(layer).from_config(layer.get_config()), layer))
        x = copies[-1][0](x)
    for copy, layer in copies:  # the reference's weights
        copy.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name=spec.row)


# ---------------------------------------------------------------------------------------------
# Bundles


def _read_or_fail(weights_path: Path, model_type: str | None) -> tuple[list[np.ndarray], str]:
    weights = read_reference_weights(weights_path)
    try:
        kind = identify_kind(weights)
    except ValueError as exc:
        raise ReferenceModelError(f"{weights_path}: {exc}") from None
    wanted = {"cnn8": "cnn8", "hybrid_cnn_xgboost": "cnn8", "detector": "detector", None: kind}
    if model_type not in wanted:
        raise ReferenceModelError(f"{weights_path}: model type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    if wanted[model_type] != kind:
        what = "the cnn2 detector's" if kind == "detector" else "a cnn_8 network's"
        raise ReferenceModelError(
            f"{weights_path}: holds {what} weights, which cannot make a {model_type} model"
        )
    return weights, kind


def network_bundle(
    weights_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    thresholds_path: str | os.PathLike | None = None,
    model_type: str | None = None,
    spectrogram: SpectrogramSettings = REFERENCE_SPECTROGRAM,
) -> Path:
    """Save a reference network as a ready-to-use batml bundle (no training).

    Parameters
    ----------
    weights_path : str or os.PathLike
        The ``cnn8`` network's weights, the hybrid's CNN (its own 8-output head is used), or
        the ``cnn2`` detector's.
    out : str or os.PathLike
        The bundle directory to write (replaced atomically).
    thresholds_path : str or os.PathLike, optional
        The reference's thresholds (percent) for the 7 groups; without, 0.5 each. Not for a
        detector, whose thresholds the reference did not publish.
    model_type : {"cnn8", "detector"}, optional
        Default: from the shapes of the weights.
    spectrogram : SpectrogramSettings
        The features the bundle reads (default :data:`REFERENCE_SPECTROGRAM`, those the
        networks were trained on).

    Returns
    -------
    Path
        ``out``: a ``cnn8`` bundle with classes :data:`~pipeline.config.REFERENCE_GROUPS`, or for
        the detector a ``cnn8`` bundle with the single class :data:`DETECTOR_CLASS` whose
        network keeps its softmax head (``P(not call), P(call)``). The manifest holds
        ``"source"`` (:func:`reference_source`) and ``"licence"`` (:data:`REFERENCE_LICENCE`).

    Raises
    ------
    ReferenceModelError
        When a file cannot be read or the weights do not fit the model type.
    """
    from pipeline.model.bundle import save_bundle
    from pipeline.model.params import load_params

    weights_path = Path(weights_path)
    if model_type == "hybrid_cnn_xgboost":
        raise ReferenceModelError(
            f"{weights_path}: a hybrid_cnn_xgboost bundle needs boosters trained on annotated "
            "recordings (hybrid_bundle; batml convert ... --dataset DATASET --audio AUDIO_DIR)"
        )
    weights, kind = _read_or_fail(weights_path, model_type)
    percent = None
    if thresholds_path is not None:
        if kind == "detector":
            raise ReferenceModelError(
                f"{thresholds_path}: the reference's thresholds are per bat group; a detector "
                "bundle has one class and its detection threshold (0.5)"
            )
        percent = read_reference_thresholds(thresholds_path)
    spec = KINDS[kind]
    network = reference_network(weights, kind)
    if kind == "detector":
        classes = [DETECTOR_CLASS]
        thresholds = {"detection": DETECTION_THRESHOLD, DETECTOR_CLASS: DETECTION_THRESHOLD}
    else:
        classes = list(REFERENCE_GROUPS)
        thresholds = thresholds_from_percent(percent if percent is not None else [50] * len(REFERENCE_OUTPUTS))
    return save_bundle(
        out,
        architecture="cnn8",
        classes=classes,
        networks={"cnn_8": network},
        boosters=None,
        thresholds=thresholds,
        spectrogram=spectrogram,
        training={
            "converted_from": "reference",
            "network": spec.row,
            "kind": kind,
            "reference_thresholds_percent": None if percent is None else [int(p) for p in percent],
            "input": "frequency axis reversed by the network's first layers (the reference's "
            "windows had the highest frequency first)",
        },
        metrics={},
        params={spec.row: load_params(spec.row)},
        source=reference_source(weights_path, thresholds_path),
        licence=REFERENCE_LICENCE,
    )


def hybrid_bundle(
    weights_path: str | os.PathLike,
    dataset: str | os.PathLike,
    audio_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    thresholds_path: str | os.PathLike | None = None,
    spectrogram: SpectrogramSettings = REFERENCE_SPECTROGRAM,
    ingest_settings=None,
    xgboost_csv: str | None = None,
    hnm_rounds: int = 0,
    seed: int = 0,
    validation_fraction: float = 0.2,
    cube: str | os.PathLike | None = None,
    trust_npz: bool = False,
    cluster: str | None = "local",
    client=None,
    n_workers: int | None = None,
    progress: bool = True,
):
    """A ``hybrid_cnn_xgboost`` bundle: the reference hybrid's CNN, boosters trained by batml.

    The CNN is kept as published; batml's training (:func:`pipeline.training.job.train`, with the
    network given as pretrained) computes its embeddings of the annotated training windows
    and trains one booster per output on them, tunes the thresholds on a validation split
    and evaluates on the test split, as for a model it trains itself.

    Parameters
    ----------
    weights_path : str or os.PathLike
        The hybrid's CNN (or any ``cnn_8``-shaped reference network).
    dataset, audio_dir : str or os.PathLike
        Annotated recordings (the reference system's ``.npz`` or a CSV of calls) and their folder. Their
        licence joins the weights' in what the model may be used for.
    out : str or os.PathLike
        The bundle directory to write.
    thresholds_path : str or os.PathLike, optional
        The reference hybrid's thresholds: recorded in the manifest only, since they were
        tuned for the reference's own boosters; the bundle's are tuned on ``dataset``.
    spectrogram : SpectrogramSettings
        Default :data:`REFERENCE_SPECTROGRAM`.
    ingest_settings : pipeline.config.IngestSettings, optional
        Channels and time expansion of the recordings.
    xgboost_csv : str, optional
        XGBoost hyperparameters (row ``xgboost_spectrogram``; default: the packaged one).
    hnm_rounds, seed, validation_fraction, cube, trust_npz, cluster, client, n_workers, progress
        As :func:`pipeline.training.job.train`.

    Returns
    -------
    pipeline.training.job.TrainReport

    Raises
    ------
    ReferenceModelError
        When the weights cannot be read or are not a ``cnn_8`` network's.
    """
    from pipeline.config import IngestSettings
    from pipeline.training.job import TrainSettings, train

    weights_path = Path(weights_path)
    weights, _ = _read_or_fail(weights_path, "hybrid_cnn_xgboost")
    source = reference_source(weights_path, thresholds_path)
    if thresholds_path is not None:
        percent = read_reference_thresholds(thresholds_path)
        source["thresholds"]["percent"] = [int(p) for p in percent]
        source["thresholds"]["used"] = False  # tuned for the reference's own boosters
    network = reference_network(weights, "cnn8")
    settings = TrainSettings(
        model_type="hybrid_cnn_xgboost",
        hnm_rounds=hnm_rounds,
        seed=seed,
        validation_fraction=validation_fraction,
        xgboost_csv=xgboost_csv,
    )
    run_settings = Settings(spectrogram=spectrogram, ingest=ingest_settings or IngestSettings())
    return train(
        dataset, audio_dir, out, settings=settings, cube=cube, run_settings=run_settings, trust_npz=trust_npz,
        cluster=cluster, client=client, n_workers=n_workers, progress=progress, pretrained={"cnn_8": network},
        source=source, licence=REFERENCE_LICENCE,
    )  # fmt: skip


def convert_reference(
    weights_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    thresholds_path: str | os.PathLike | None = None,
    model_type: str | None = None,
    dataset: str | os.PathLike | None = None,
    audio_dir: str | os.PathLike | None = None,
    **hybrid_options,
):
    """``batml convert WEIGHTS.npy``: :func:`network_bundle`, or :func:`hybrid_bundle` for
    ``model_type="hybrid_cnn_xgboost"`` (which needs ``dataset`` and ``audio_dir``).

    Returns
    -------
    Path or pipeline.training.job.TrainReport
    """
    if model_type == "hybrid_cnn_xgboost":
        if dataset is None or audio_dir is None:
            raise ReferenceModelError(
                f"{weights_path}: a hybrid_cnn_xgboost bundle trains its boosters on annotated "
                "recordings: give --dataset DATASET and --audio AUDIO_DIR"
            )
        return hybrid_bundle(
            weights_path, dataset, audio_dir, out, thresholds_path=thresholds_path, **hybrid_options
        )
    return network_bundle(weights_path, out, thresholds_path=thresholds_path, model_type=model_type)


def licence_line(manifest: Mapping[str, Any]) -> str | None:
    """The line a command prints where a model with restricted terms is used, or None."""
    licence = manifest.get("licence")
    if not licence:
        return None
    source = manifest.get("source") or {}
    origin = f" (weights from {source['repository']})" if source.get("repository") else ""
    return f"model licence: {licence}{origin}"
