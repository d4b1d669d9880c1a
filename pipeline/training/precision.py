"""int8 or float for a bundle's runtime graphs, decided by measurement when the model is made.

:func:`choose_runtime_graphs` quantizes the network's ONNX graphs to int8
(:func:`pipeline.model.export.quantized_int8`, calibrated on spectrogram columns of the training
recordings), detects the validation recordings with the float and the int8 graphs the way
``batml detect`` does (:class:`pipeline.detection.scorers.WindowScorer` with the default scan and
boosters' policy), and keeps int8 only when its detection AP and its class mAP are both within
:data:`AP_TOLERANCE` of float's (:mod:`pipeline.model.accuracy`, :func:`keeps_accuracy`). The
int8 variants of :data:`INT8_VARIANTS` are tried in turn: every layer but the output layer, then
the embedding layer float too (a hybrid's boosters split on embedding values). The bundle holds
the graphs of the chosen precision, and its manifest's ``"runtime"`` says which, with the APs
measured.

Measured on a valid-time hybrid (``cnn_8_dense``, 10 simulated minutes and the 3 annotated real
recordings, 30 epochs; validation split, 15 recordings): float 0.8935, int8 0.8757, int8 with a
float embedding 0.8775, so that model keeps float. Two other variants were measured and left
out: calibrating the activations at the 99.99th or 99.9th percentile (0.870, 0.878), and the
first convolution in float (0.891, within tolerance, but 45 us per strip column against 28 in
float and 15 in int8: ONNX Runtime then runs the first pool in uint8 without its fast layout).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

#: The detection AP int8 may lose against float and still be kept.
AP_TOLERANCE = 0.005

#: The int8 variants tried in turn (:func:`pipeline.model.export.quantized_int8`'s options): the
#: first that keeps the AP is kept.
INT8_VARIANTS = {
    "int8": {},
    "int8_float_embedding": {"float_embedding": True},
}

#: Calibration: strips of this many columns (512 windows), at most this many.
CALIBRATION_COLUMNS = 531
CALIBRATION_STRIPS = 12


def calibration_inputs(model, spectrograms: Sequence[np.ndarray], *, width: int = 20) -> list[np.ndarray]:
    """Inputs of one graph for :func:`pipeline.model.export.quantized_int8`, all of one shape.

    The recordings' spectrograms ``(n_columns, rows)`` are laid end to end and cut into
    :data:`CALIBRATION_STRIPS` strips of :data:`CALIBRATION_COLUMNS` columns, spread over the whole:
    as they are for a strip graph, as the windows starting at every 4th column of each strip for
    a window graph.
    """
    columns = np.concatenate([np.asarray(s, np.float32) for s in spectrograms if len(s)], axis=0)
    n = max(len(columns) - CALIBRATION_COLUMNS + 1, 1)
    starts = np.unique(np.linspace(0, n - 1, CALIBRATION_STRIPS).astype(int))
    strips = [columns[s : s + CALIBRATION_COLUMNS] for s in starts]
    strips = [s for s in strips if len(s) == CALIBRATION_COLUMNS] or [columns]
    if model.graph.input[0].name == "strip":
        return [np.ascontiguousarray(s.T) for s in strips]
    from pipeline.detection.scoring import recording_windows

    return [recording_windows(s, np.arange(0, len(s) - width + 1, 4), width) for s in strips]


def keeps_accuracy(reference, candidate) -> bool:
    """Whether ``candidate`` (a :class:`pipeline.model.accuracy.ScorerAccuracy`) is within
    :data:`AP_TOLERANCE` of ``reference`` in detection AP and, where the classes have any AP (not
    NaN), in mAP: quantization must not cost the species either."""
    losses = [reference.detection_ap - candidate.detection_ap]
    if np.isfinite(reference.class_map):
        losses.append(reference.class_map - candidate.class_map)  # NaN for the candidate: not kept
    return all(loss <= AP_TOLERANCE for loss in losses)


def quantized_graphs(graphs: Mapping, spectrograms: Sequence[np.ndarray], **options) -> dict:
    """``{variant: int8 onnx.ModelProto}`` of float graphs, calibrated on spectrograms
    (:func:`pipeline.model.export.quantized_int8`)."""
    from pipeline.model.export import quantized_int8

    return {
        variant: quantized_int8(graph, calibration_inputs(graph, spectrograms), **options)
        for variant, graph in graphs.items()
    }


def cube_spectrograms(cube, recordings: Sequence, limit_columns: int = 200_000) -> list[np.ndarray]:
    """The spectrograms of annotated recordings of a cube (at most ``limit_columns`` in all)."""
    from pipeline.annotations.matching import match_recordings

    indices, _ = match_recordings(cube, [rec.file for rec in recordings])
    out, total = [], 0
    for r in indices:
        if r is None or total >= limit_columns:
            continue
        spec = cube.batml.recording(r)["spectrogram"].values.astype(np.float32)
        out.append(spec)
        total += len(spec)
    return out


def calibration_spectrograms(source: str | os.PathLike, bundle, limit_columns: int = 200_000) -> list[np.ndarray]:
    """Spectrograms for calibration from recordings (a folder, a file) or a cube, with the
    bundle's spectrogram settings, stored as the cube stores them (float16)."""
    from pipeline.detection.archive import is_cube

    if is_cube(source):
        from pipeline.io.cube import open_cube

        cube = open_cube(source)
        spectrograms, total = [], 0
        for r in range(len(cube.batml.recordings)):
            if total >= limit_columns:
                break
            spec = cube.batml.recording(r)["spectrogram"].values.astype(np.float32)
            spectrograms.append(spec)
            total += len(spec)
        return spectrograms
    from pipeline import spectrogram as sg
    from pipeline.io import audio
    from pipeline.io.archive import discover

    spectrograms, total = [], 0
    for path in discover(source):
        if total >= limit_columns:
            break
        try:
            info = audio.read_info(path)
            audio.check_usable(info, bundle.spectrogram)
            samples = audio.read_samples(path, channel=0)
        except audio.RecordingError:
            continue
        spec = sg.spectrogram(samples, info.real_rate, bundle.spectrogram).astype(np.float16).astype(np.float32)
        spectrograms.append(spec)
        total += len(spec)
    return spectrograms


def detection_ap(network, boosters, cube, recordings: Sequence, classes: Sequence[str], detect_settings=None):
    """Detection AP and class mAP (:func:`pipeline.model.accuracy.scorer_accuracy`) of a network
    (a :class:`~pipeline.model.runtime.NetworkRuntime` without boosters) and a hybrid's boosters,
    scored as ``batml detect`` scores (default scan, boosters near the head's peaks)."""
    from pipeline.detection.scorers import WindowScorer
    from pipeline.detection.settings import DetectSettings
    from pipeline.model.accuracy import scorer_accuracy

    settings = detect_settings or DetectSettings()
    scorer = WindowScorer(
        network, boosters, booster_gate=settings.booster_gate, booster_margin=settings.booster_margin
    )

    def score(spec: np.ndarray) -> np.ndarray:
        return scorer.score_columns(spec, 0, len(spec), len(spec), settings.scan)

    return scorer_accuracy(score, cube, recordings, classes)


def choose_runtime_graphs(
    network, boosters, cube, calibration: Sequence, validation: Sequence, classes: Sequence[str]
) -> tuple[dict | None, dict]:
    """The runtime graphs a bundle keeps and its manifest's ``"runtime"`` section.

    Parameters
    ----------
    network : keras.Model
        The trained network (one-stage CNN).
    boosters : mapping or None
        A hybrid's boosters.
    cube : xarray.Dataset
        The training cube.
    calibration, validation : sequences of RecordingCalls
        The recordings whose columns calibrate int8 (the training split) and on which the two
        precisions are compared (the validation split).
    classes : sequence of str

    Returns
    -------
    (dict or None, dict)
        ``{variant: onnx.ModelProto}`` (int8 when it kept the AP, else float; None when the
        network cannot be exported) and ``{"precision": ..., "int8_check": {...}}``.
    """
    from pipeline.model.export import runtime_graphs
    from pipeline.model.runtime import NetworkRuntime

    try:
        float_graphs = runtime_graphs(network)
    except ValueError:
        return None, {}
    spectrograms = cube_spectrograms(cube, calibration)
    if not validation or not spectrograms:
        return float_graphs, {"precision": "float", "int8_check": {"skipped": "no validation or calibration recording"}}

    def runtime(graphs):
        strips = {variant: graph for variant, graph in graphs.items() if variant != "windows"}
        return NetworkRuntime(graphs["windows"], strips or None)

    boosters = dict(boosters) if boosters else None
    as_float = detection_ap(runtime(float_graphs), boosters, cube, validation, classes)
    check = {
        "recordings": len(validation),
        "events_float": as_float.n_events,
        "detection_ap_float": round(as_float.detection_ap, 6),
        "class_map_float": round(as_float.class_map, 6),
        "tolerance": AP_TOLERANCE,
        "calibration_columns": int(sum(len(s) for s in spectrograms)),
    }
    for variant, options in INT8_VARIANTS.items():
        int8_graphs = quantized_graphs(float_graphs, spectrograms, **options)
        as_int8 = detection_ap(runtime(int8_graphs), boosters, cube, validation, classes)
        check[f"detection_ap_{variant}"] = round(as_int8.detection_ap, 6)
        check[f"class_map_{variant}"] = round(as_int8.class_map, 6)
        if keeps_accuracy(as_float, as_int8):
            check["kept"] = variant
            return int8_graphs, {"precision": "int8", "int8_check": check}
    return float_graphs, {"precision": "float", "int8_check": check}
