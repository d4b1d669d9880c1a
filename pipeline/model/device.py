"""``batml export``: a model in forms a recorder-class device runs, with a reference runner.

:func:`export_device` writes into a folder:

- ``model.json``: the spectrogram settings, the classes and thresholds, the score's calibration
  (``score_calibration``: breakpoints of a piecewise-linear map), the detection's settings
  (window width, smoothing, NMS radius, the coarse-to-fine scan, where the boosters run), the
  file names below, the model's identity, source and licence;
- ``network.windows.onnx`` (and, for a network valid along time, ``network.strip<k>.onnx``): the
  network as ONNX graphs (:mod:`pipeline.model.export`), int8 with ``int8=True``;
- ``boosters.npz`` (hybrids): the XGBoost trees as flat arrays (:func:`booster_arrays`), plain
  numbers only, read with ``allow_pickle=False``;
- ``runner.py``: :mod:`pipeline.model.device_runner`, the reference runner, which needs numpy and
  ONNX Runtime only and reproduces ``batml detect``'s events on the same audio
  (``tests/test_device_export.py``);
- ``README.txt``: what the files are, how to run them, and the model's terms of use.

**ONNX, not LiteRT.** LiteRT files are produced by TensorFlow's converter, which would have to
run the Keras network again at export time, and its int8 converter quantizes the network
differently from the int8 graphs batml measures and detects with; ONNX Runtime runs the same
graphs on ARM and x86 Linux recorders, and the graphs are the ones ``batml detect`` runs, so the
export's events are the ones batml reports. ``--format litert`` is refused with that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The folder layout's version, in ``model.json``.
EXPORT_FORMAT = "batml-device-export"
EXPORT_VERSION = 2  # 2: model.json has the score calibration (1: none, the raw call score)

#: Formats ``batml export`` knows; only ONNX is written (see the module's docstring).
FORMATS = ("onnx", "litert")


class ExportError(ValueError):
    """An export that cannot be made as asked; one line for the user."""


# ---------------------------------------------------------------------------------------------
# Boosters as flat arrays


def booster_arrays(booster) -> dict[str, np.ndarray]:
    """One XGBoost booster (``binary:logistic``, numerical splits) as flat arrays of nodes.

    Returns
    -------
    dict of str to numpy.ndarray
        ``left``, ``right`` (int32: the children's indices in these arrays, -1 at a leaf),
        ``feature`` (int32), ``threshold`` (float32: a row goes left when its value is below),
        ``default_left`` (uint8: where a missing value goes), ``value`` (float32: the leaf's
        value, 0 elsewhere), ``roots`` (int32: each tree's first node), ``base_margin`` (float32:
        the logit of the base score), ``depth`` (int32: the deepest tree's depth). The
        probability of a row is ``sigmoid(base_margin + sum over trees of the leaf value)``.

    Raises
    ------
    ExportError
        For another objective, categorical splits or vector leaves.
    """
    model = json.loads(booster.save_raw("json"))["learner"]
    objective = model["objective"]["name"]
    if objective != "binary:logistic":
        raise ExportError(f"booster objective {objective} cannot be exported (binary:logistic only)")
    base = float(str(model["learner_model_param"]["base_score"]).strip("[]"))
    trees = model["gradient_booster"]["model"]["trees"]
    left, right, feature, threshold, default_left, value, roots, depth = [], [], [], [], [], [], [], 0
    offset = 0
    for tree in trees:
        if any(tree.get("split_type", [])) or int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
            raise ExportError("boosters with categorical splits or vector leaves cannot be exported")
        lc, rc = np.asarray(tree["left_children"], np.int64), np.asarray(tree["right_children"], np.int64)
        leaf = lc < 0
        roots.append(offset)
        left.append(np.where(leaf, -1, lc + offset))
        right.append(np.where(leaf, -1, rc + offset))
        conditions = np.asarray(tree["split_conditions"], np.float32)
        feature.append(np.where(leaf, 0, np.asarray(tree["split_indices"], np.int64)))
        threshold.append(np.where(leaf, np.float32(0), conditions))
        value.append(np.where(leaf, conditions, np.float32(0)))
        default_left.append(np.asarray(tree["default_left"], np.uint8))
        depth = max(depth, _tree_depth(lc, rc))
        offset += len(lc)
    return {
        "left": np.concatenate(left).astype(np.int32),
        "right": np.concatenate(right).astype(np.int32),
        "feature": np.concatenate(feature).astype(np.int32),
        "threshold": np.concatenate(threshold).astype(np.float32),
        "default_left": np.concatenate(default_left).astype(np.uint8),
        "value": np.concatenate(value).astype(np.float32),
        "roots": np.asarray(roots, np.int32),
        "base_margin": np.asarray(np.log(base / (1.0 - base)), np.float32),
        "depth": np.asarray(depth, np.int32),
    }


def _tree_depth(left: np.ndarray, right: np.ndarray) -> int:
    depth, level = 0, [0]
    while level:
        children = [c for node in level for c in (left[node], right[node]) if c >= 0]
        if not children:
            break
        depth, level = depth + 1, children
    return depth


def forest_probabilities(arrays: Mapping[str, np.ndarray], embedding: np.ndarray) -> np.ndarray:
    """The probabilities of one booster's flat arrays (:func:`booster_arrays`) on rows of
    ``embedding``: what the runner computes, for checking the arrays against XGBoost."""
    from pipeline.model.device_runner import Forest

    margin = Forest.margin(dict(arrays), np.ascontiguousarray(embedding, np.float32))
    return (1.0 / (1.0 + np.exp(-margin))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The export


@dataclass
class DeviceExport:
    """What :func:`export_device` wrote."""

    folder: Path
    precision: str
    files: dict = field(default_factory=dict)  # name -> bytes
    notes: list = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        """Bytes of the model files (the runner and the README excluded)."""
        return sum(size for name, size in self.files.items() if name not in ("runner.py", "README.txt"))

    def summary(self) -> str:
        lines = [f"exported to {self.folder} ({self.precision} network, {self.size_bytes / 1e6:.2f} MB of model files):"]
        lines += [f"  {name}: {size / 1e3:.1f} kB" for name, size in sorted(self.files.items())]
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"run it: python {self.folder / 'runner.py'} RECORDING.wav (numpy and onnxruntime only)")
        return "\n".join(lines)


def export_device(
    model: str | os.PathLike | None,
    to: str | os.PathLike,
    *,
    format: str = "onnx",
    int8: bool = False,
    calibration: str | os.PathLike | None = None,
    detect_settings=None,
) -> DeviceExport:
    """Write a model bundle as a device export (see the module's docstring).

    Parameters
    ----------
    model : path, optional
        The bundle (default: the bundled model).
    to : path
        The export folder: created, or replaced when it holds an earlier export.
    format : {"onnx", "litert"}
        Only ``onnx`` is written; ``litert`` is refused (the module's docstring says why).
    int8 : bool
        The int8 network: the bundle's int8 graphs (kept by training where they keep the
        detection AP), else quantized here, calibrated on the spectrograms of ``calibration``.
    calibration : path, optional
        Recordings (a folder or a cube) whose spectrogram columns calibrate the int8
        quantization of a bundle without int8 graphs.
    detect_settings : DetectSettings, optional
        The scan and the boosters' policy the runner follows (default: ``batml detect``'s).

    Returns
    -------
    DeviceExport

    Raises
    ------
    ExportError
        For an architecture the runner does not run (two-stage models, ResNets), a network the
        ONNX export does not rebuild, ``litert``, or ``int8`` without int8 graphs or calibration.
    """
    from pipeline.detection.settings import DetectSettings
    from pipeline.files import staging_directory
    from pipeline.model.bundle import DEFAULT_BUNDLE, load_bundle
    from pipeline.model.inference import runtime_graphs

    if format not in FORMATS:
        raise ExportError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    if format == "litert":
        raise ExportError(
            "--format litert is not written: LiteRT files come from TensorFlow's converter, whose int8 network "
            "differs from the graphs batml detects with; export onnx (ONNX Runtime runs on ARM and x86 recorders)"
        )
    settings = detect_settings or DetectSettings()
    bundle = load_bundle(DEFAULT_BUNDLE if model is None else Path(model))
    if bundle.spec.two_stage or bundle.spec.family != "cnn":
        raise ExportError(f"{bundle.path}: {bundle.architecture} models are not exported (cnn8 and hybrid_cnn_xgboost are)")
    precision = "int8" if int8 else "float"
    notes = []
    if int8 and bundle.runtime.get("precision") == "int8":
        graphs = {v: source.read() for v, source in _variants(runtime_graphs(bundle, "int8")).items()}
        check = bundle.runtime.get("int8_check")
        if check:
            notes.append(f"int8 network from the bundle ({_check_text(check)})")
    else:
        float_graphs = runtime_graphs(bundle, "float")
        if float_graphs is None:
            raise ExportError(f"{bundle.path}: its network is not one the ONNX export rebuilds")
        graphs = {v: source.read() for v, source in _variants(float_graphs).items()}
        if int8:
            if calibration is None:
                raise ExportError(
                    f"{bundle.path} holds no int8 graphs: give --calibration AUDIO_DIR|CUBE (recordings of the kind "
                    "the device will hear) to quantize the network, or export it in float"
                )
            graphs = _quantized(graphs, bundle, calibration)
            notes.append(
                f"int8 network quantized here, calibrated on {calibration}; its detection AP was not checked "
                "(benchmarks/detect_speed.py measures it)"
            )
    boosters = bundle.boosters() if bundle.spec.hybrid else {}
    target = Path(to)
    _refuse_foreign_folder(target)
    names = {variant: f"network.{variant}.onnx" for variant in graphs}
    document = _model_document(bundle, settings, precision, names, bool(boosters))
    written = {}
    with staging_directory(target) as staging:
        for variant, blob in graphs.items():
            (staging / names[variant]).write_bytes(blob)
        if boosters:
            arrays = {}
            for j, booster in enumerate(boosters.values()):
                arrays.update({f"b{j}_{key}": value for key, value in booster_arrays(booster).items()})
            np.savez_compressed(staging / "boosters.npz", **arrays)
        runner = Path(__file__).with_name("device_runner.py")
        shutil.copyfile(runner, staging / "runner.py")
        (staging / "model.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        (staging / "README.txt").write_text(_readme(document), encoding="utf-8")
        written = {entry.name: entry.stat().st_size for entry in staging.iterdir()}
    return DeviceExport(target, precision, written, notes)


def _variants(graphs) -> dict:
    from pipeline.model.export import WINDOW_VARIANT, strip_variant

    return {WINDOW_VARIANT: graphs.windows, **{strip_variant(k): source for k, source in graphs.strips.items()}}


def _check_text(check: Mapping) -> str:
    try:
        return (
            f"detection AP {check['detection_ap_int8']:.4f} against {check['detection_ap_float']:.4f} in float "
            f"on {check['recordings']} validation recordings"
        )
    except (KeyError, TypeError, ValueError):
        return "checked at training"


def _quantized(graphs: dict, bundle, calibration) -> dict:
    """The float graphs quantized to int8, calibrated on the spectrogram of recordings."""
    import onnx

    from pipeline.training.precision import calibration_spectrograms, quantized_graphs

    spectrograms = calibration_spectrograms(calibration, bundle)
    if not spectrograms:
        raise ExportError(f"{calibration}: no usable recording to calibrate the int8 network on")
    models = {variant: onnx.load_from_string(blob) for variant, blob in graphs.items()}
    return {variant: model.SerializeToString() for variant, model in quantized_graphs(models, spectrograms).items()}


def _model_document(bundle, settings, precision: str, names: dict, hybrid: bool) -> dict:
    from pipeline.config import WINDOW_COLUMNS
    from pipeline.detection.events import NMS_RADIUS_COLUMNS, SMOOTHING_SIGMA_COLUMNS
    from pipeline.detection.settings import resolve_thresholds
    from pipeline.model.bundle import DEFAULT_BUNDLE, MANIFEST_NAME
    from pipeline.model.export import WINDOW_VARIANT

    manifest_sha = hashlib.sha256((bundle.path / MANIFEST_NAME).read_bytes()).hexdigest()
    spectrogram = {**bundle.spectrogram.to_dict(), "log_scale_expansion": bundle.spectrogram.log_scale_expansion}
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "model": {
            "architecture": bundle.architecture,
            "bundle": str(bundle.path),
            "manifest_sha256": manifest_sha,
            **({"default": True} if bundle.path.resolve() == DEFAULT_BUNDLE.resolve() else {}),
            **({"source": bundle.manifest["source"]} if bundle.manifest.get("source") else {}),
        },
        "licence": bundle.licence,
        "classes": list(bundle.classes),
        "thresholds": resolve_thresholds(bundle, settings.thresholds),
        "score_calibration": {"raw": list(bundle.calibration.raw), "calibrated": list(bundle.calibration.calibrated)},
        "spectrogram": {**spectrogram, "fingerprint": bundle.fingerprint, "stored_as": "float16"},
        "detection": {
            "width": WINDOW_COLUMNS,
            "sigma_columns": SMOOTHING_SIGMA_COLUMNS,
            "radius_columns": NMS_RADIUS_COLUMNS,
            "scan_stride": int(settings.scan_stride),
            "scan_gamma": float(settings.scan_gamma),
            "booster_gate": float(settings.booster_gate),
            "booster_margin": None if settings.booster_margin is None else int(settings.booster_margin),
        },
        "network": {
            "precision": precision,
            "width": WINDOW_COLUMNS,
            "windows": names[WINDOW_VARIANT],
            "strips": {variant.removeprefix("strip"): name for variant, name in names.items() if variant != WINDOW_VARIANT},
            "inputs": {"windows": "float32 (b, rows, 20, 1)", "strip": "float32 (rows, T)"},
            "outputs": ["probabilities", "embedding"],
        },
        "boosters": "boosters.npz" if hybrid else None,
    }


def _readme(document: dict) -> str:
    licence = document.get("licence") or "none recorded in the model's manifest"
    return (
        f"batml device export ({document['model']['architecture']}, {document['network']['precision']} network)\n\n"
        "  model.json           spectrogram settings, classes, thresholds, score calibration, detection settings,\n"
        "                       file names\n"
        f"  {document['network']['windows']:<20} the network (ONNX), windows (b, rows, 20, 1) -> probabilities, embedding\n"
        + "".join(f"  {name:<20} the same network over a strip of columns, every {k}th window\n"
                  for k, name in document["network"]["strips"].items())  # fmt: skip
        + ("  boosters.npz         the XGBoost trees as flat arrays (numpy, no pickle)\n" if document["boosters"] else "")
        + "  runner.py            reference runner: python runner.py RECORDING.wav [-o calls.csv]\n"
        "                       (needs numpy and onnxruntime only; reproduces batml detect's events)\n\n"
        f"Terms of use of this model: {licence}\n"
    )


def _refuse_foreign_folder(target: Path) -> None:
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / "model.json").is_file())):
        raise ExportError(f"{target}: exists and is not a batml export; refusing to replace it")
