"""Plots for exploring a detection run: a spectrogram with its detections, precision-recall
curves, activity per hour of night or per site, confusion between species.

Every plot is a function that returns a :class:`matplotlib.figure.Figure` built without
:mod:`matplotlib.pyplot`'s global state (no figure is kept alive behind the caller's back,
so plotting in a loop leaks nothing, and it works headless). Give ``ax`` to draw into axes
of your own (``axes`` for :func:`spectrogram`). In Jupyter the returned figure is shown as the cell's value::

    import pipeline
    from pipeline import plot
    cube = pipeline.open_cube("results/night/cube.zarr")
    calls = pipeline.read_detections("results/night")
    plot.spectrogram(cube, "site01/20260612_213015.wav", 1.0, 3.0, detections=calls)
    plot.activity(calls, by="hour", timestamps=cube)

The tables are those of the rest of batml: *detections* as
:func:`pipeline.outputs.parts.read_detections` returns them (``file``, ``channel``, ``time``,
``class``, ``probability``, ``score``, ``prob_<class>``), *calls* as
a CSV of calls has them (``file``, ``position``, ``class`` 1..K: the simulator's
``annotations.csv``, or :meth:`pipeline.annotations.dataset.Annotations.recoded` to a model's classes). The scores come from :mod:`pipeline.evaluation`, never recomputed here.

**Which species a call is.** A call is multi-label: it counts for every species whose
probability reaches ``min_probability``. The calls kept are then exactly those whose
``probability`` (their most probable class's) reaches it, as
``read_detections(min_probability=...)`` keeps them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pipeline.annotations.matching import align_recordings
from pipeline.detection.schema import probability_column
from pipeline.evaluation.matching import DEFAULT_TOLERANCE, event_labels, match_detections
from pipeline.evaluation.metrics import class_average_precision, detection_average_precision
from pipeline.files import atomic_path

#: Colour of each of the seven groups (tab10, stable whatever the groups plotted).
SPECIES_COLOURS = {
    "Barbarg": "tab:blue", "Envsp": "tab:orange", "Myosp": "tab:green", "Pip35": "tab:red",
    "Pip50": "tab:purple", "Plesp": "tab:brown", "Rhisp": "tab:pink",
}  # fmt: skip
#: Columns of a spectrogram drawn at most (a longer range is drawn as the maximum of runs of columns).
MAX_DISPLAY_COLUMNS = 8192
#: Label of the column of calls no detection found, in :func:`confusion_counts`.
MISSED = "missed"
#: Site of a file of a relative path without folders, in :func:`site_of`.
TOP_FOLDER = "(top folder)"

_NAME_TIMESTAMP = re.compile(r"(?<!\d)(\d{8})[_T-]?(\d{6})(?!\d)")


class PlotError(ValueError):
    """Inputs a plot cannot be drawn from; the message is one line for the user."""


def _show_figures_in_jupyter() -> None:
    """Let Jupyter show a returned figure as an image, as pyplot's inline backend would.

    The figures here are not pyplot's, so nothing registers how to show them until pyplot
    is imported; a formatter registered already (by a backend) is left as it is.
    """
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if get_ipython else None
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    from IPython.core.pylabtools import print_figure

    png = shell.display_formatter.formatters["image/png"]
    try:
        png.lookup_by_type(Figure)
    except KeyError:
        png.for_type(Figure, lambda figure: print_figure(figure, "png"))


_show_figures_in_jupyter()


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _figure_and_axes(ax, **figure_options):
    """``(figure, ax)``: the given axes and their figure, or a new figure with one axes."""
    if ax is not None:
        return ax.figure, ax
    figure = Figure(**figure_options)
    return figure, figure.add_subplot()


def _colour(name: str, k: int) -> str:
    return SPECIES_COLOURS.get(name, f"C{k % 10}")


def _classes_of(detections: pd.DataFrame) -> list[str]:
    return [c[len("prob_") :] for c in detections.columns if str(c).startswith("prob_")]


def _detections_table(detections, *, min_probability=None) -> pd.DataFrame:
    """A detections DataFrame: as given, computed (a Dask DataFrame of :func:`pipeline.open_detections`),
    or read from a run's output folder."""
    if isinstance(detections, pd.DataFrame):
        return detections
    if hasattr(detections, "compute"):
        return detections.compute()
    from pipeline.outputs.parts import read_detections

    return read_detections(detections, min_probability=min_probability)


def species_reached(
    detections: pd.DataFrame, min_probability: float, classes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Which species each call is: a boolean table, one column per class.

    Parameters
    ----------
    detections : pandas.DataFrame
        Detected calls with ``prob_<class>`` columns.
    min_probability : float
        A call is of every species whose probability reaches this value.
    classes : sequence of str, optional
        The classes (default: those of the ``prob_`` columns, in order).

    Returns
    -------
    pandas.DataFrame
        Same index as ``detections``, one boolean column per class.

    Examples
    --------
    >>> calls = pd.DataFrame({"prob_Pip35": [0.9, 0.2], "prob_Myosp": [0.6, 0.1]})
    >>> species_reached(calls, 0.5).sum().to_dict()
    {'Pip35': 1, 'Myosp': 1}
    """
    classes = list(classes) if classes is not None else _classes_of(detections)
    return pd.DataFrame(
        {c: detections[probability_column(c)].to_numpy(np.float64) >= float(min_probability) for c in classes},
        index=detections.index,
    )


def save_figure(figure: Figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write a figure to a file atomically (a temporary name, then renamed).

    Parameters
    ----------
    figure : matplotlib.figure.Figure
    path : str or os.PathLike
        The file; its suffix says the format (``.png``, ``.pdf``, ``.svg``...).
    dpi : int
        Dots per inch of a raster format: a 10 x 6 inch figure at 100 dpi is 1000 x 600 pixels.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> save_figure(activity(calls), "activity.png")   # doctest: +SKIP
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    supported = figure.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise PlotError(f"{path}: unknown image format {fmt!r}; use one of {', '.join(sorted(supported))}")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=fmt, dpi=dpi)
    return path


# --------------------------------------------------------------------------------------------
# Spectrogram of a recording with its detections
# --------------------------------------------------------------------------------------------


def _open(cube):
    if isinstance(cube, (str, os.PathLike)):
        from pipeline.io.cube import open_cube

        return open_cube(cube)
    return cube


def _cube_settings(cube):
    from pipeline.config import SpectrogramSettings

    return SpectrogramSettings.from_dict(json.loads(cube.attrs["spectrogram_settings"]), source="cube")


def _column_range(n_columns: int, step: float, begin: float | None, end: float | None) -> tuple[int, int]:
    """The columns whose start lies in ``[begin, end)`` s (column ``c`` starts at ``c * step``)."""
    lo = 0 if begin is None else int(np.clip(math.ceil(float(begin) / step - 1e-9), 0, n_columns))
    hi = n_columns if end is None else int(np.clip(math.ceil(float(end) / step - 1e-9), lo, n_columns))
    return lo, hi


def _recording_detections(detections, path: str, channel: int, begin: float, end: float, min_probability: float):
    if isinstance(detections, (str, os.PathLike)):  # a run's folder: only this file's rows are read
        from pipeline.outputs.parts import read_detections

        table = read_detections(detections, min_probability=min_probability, files=path)
    else:
        table = _detections_table(detections)
    keep = (
        (table["file"].astype(str) == path)
        & (table["channel"].to_numpy() == channel)
        & (table["time"].to_numpy() >= begin)
        & (table["time"].to_numpy() < end)
        & (table["probability"].to_numpy(np.float64) >= float(min_probability))
    )
    return table[keep]


def _model_predictor(model, fingerprint: str):
    """``(predictor, classes, thresholds, calibration)`` of a model (a
    :class:`~pipeline.model.model.Model`, a bundle or a bundle's path) made for the cube's settings."""
    from pipeline.model.model import Model, open_model

    if not isinstance(model, Model):
        model = Model(model) if hasattr(model, "spectrogram") else open_model(model)
    if model.fingerprint != fingerprint:
        raise PlotError(
            f"{model.path}: the model expects spectrogram settings {model.fingerprint}, the cube has {fingerprint}"
        )
    return model.predictor(booster_gate=0.0), model.classes, model.thresholds, model.calibration


def _draw_probabilities(ax, times, probs, classes, thresholds, calibration):
    # The call score as detections report it (calibrated), on the scale of the detection threshold.
    ax.plot(times, calibration(1.0 - probs[:, 0]), color="black", linewidth=1.5, label="call")
    for k, name in enumerate(classes):
        ax.plot(times, probs[:, k + 1], color=_colour(name, k), linewidth=1.0, label=name)
    ax.axhline(thresholds.get("detection", 0.5), color="grey", linestyle=":", linewidth=1.0)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probability")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)


def spectrogram(
    cube,
    recording: int | str,
    begin: float | None = None,
    end: float | None = None,
    *,
    channel: int | None = None,
    detections=None,
    min_probability: float = 0.5,
    model=None,
    axes=None,
    figsize: tuple[float, float] = (12.0, 5.0),
) -> Figure:
    """The spectrogram of part of one recording, its detected calls boxed and labelled.

    Only the columns of ``[begin, end)`` are read from the cube (a few seconds are what a
    figure shows well: more than :data:`MAX_DISPLAY_COLUMNS` columns, about 9.5 s, are
    drawn as the maximum of runs of columns; the model panel scores every window of the range).

    Parameters
    ----------
    cube : xarray.Dataset or path
        A spectrogram cube (:func:`pipeline.open_cube`), or its path.
    recording : int or str
        The recording: its index, its path, or the end of its path (``"site01/x.wav"``).
    begin, end : float, optional
        The time range (real seconds from the start of the recording); default: all of it.
    channel : int, optional
        The channel, for a multichannel file analysed channel by channel.
    detections : pandas.DataFrame or path, optional
        Detected calls (:func:`pipeline.read_detections`) or a run's output folder (of
        which only this recording's calls are read). Each call
        of this recording in the range whose probability reaches ``min_probability`` is a box
        as long as a model window, labelled with every species that reaches it and its
        probability.
    min_probability : float
        See ``detections``.
    model : path or ModelBundle, optional
        A model bundle (:func:`pipeline.open_model`): a second panel shows its call score
        (calibrated, as detections report it) and its probability of each class for the window
        starting at every column (every window scored; the dotted line is the model's detection
        threshold).
    axes : matplotlib Axes or sequence of two, optional
        Where to draw: one axes, or two (spectrogram, probabilities) with ``model``.
    figsize : (float, float)
        Size in inches of a new figure (100 pixels per inch when saved by :func:`save_figure`).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> cube = pipeline.open_cube("results/night/cube.zarr")                  # doctest: +SKIP
    >>> spectrogram(cube, "site01/20260612_213015.wav", 1.0, 2.5,
    ...             detections="results/night", model=pipeline.open_model())   # doctest: +SKIP
    """
    from pipeline.config import WINDOW_COLUMNS
    from pipeline.detection.archive import window_seconds
    from pipeline.detection.scoring import column_probabilities

    where = f"{os.fspath(cube)}: " if isinstance(cube, (str, os.PathLike)) else ""
    cube = _open(cube)
    try:
        r = cube.batml.recording_index(recording, channel)
    except KeyError as exc:
        raise PlotError(f"{where}{exc.args[0]}") from None
    settings = _cube_settings(cube)
    row = cube[["path", "channel", "start", "n_columns", "real_rate"]].isel(recording=r).compute()
    path, ch = str(row["path"].item()), int(row["channel"])
    start, n_columns = int(row["start"]), int(row["n_columns"])
    step = settings.column_step_s(float(row["real_rate"]))
    lo, hi = _column_range(n_columns, step, begin, end)
    if hi <= lo:
        raise PlotError(
            f"{path}: no column from {begin or 0:g} s to {'the end' if end is None else f'{end:g} s'} "
            f"(the recording lasts {n_columns * step:.3f} s)"
        )
    stop = min(hi + WINDOW_COLUMNS - 1, n_columns) if model is not None else hi
    columns = cube["spectrogram"].isel(time=slice(start + lo, start + stop)).values.astype(np.float32)
    times = cube["offset"].isel(time=slice(start + lo, start + hi)).values

    n_panels = 2 if model is not None else 1
    if axes is None:
        figure = Figure(figsize=figsize, layout="constrained")
        axes = figure.subplots(n_panels, 1, sharex=True, squeeze=False, height_ratios=[3, 1.4][:n_panels])[:, 0]
    else:
        axes = np.atleast_1d(axes)
        figure = axes[0].figure
    ax = axes[0]
    frequencies_khz = np.asarray(cube["frequency"].values) / 1000.0
    half_row = (frequencies_khz[1] - frequencies_khz[0]) / 2 if len(frequencies_khz) > 1 else 0.5
    low, high = frequencies_khz[0] - half_row, frequencies_khz[-1] + half_row
    ax.imshow(
        _for_display(columns[: hi - lo]).T, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
        extent=(times[0], times[-1] + step, low, high),
    )  # fmt: skip
    ax.set_ylabel("frequency (kHz)")
    label = path if ch == 0 else f"{path} (channel {'mix' if ch < 0 else ch})"
    ax.set_title(f"{label}, {times[0]:.3f}-{times[-1] + step:.3f} s", fontsize="medium", loc="left")
    if detections is not None:
        calls = _recording_detections(detections, path, ch, times[0], times[-1] + step, min_probability)
        _draw_boxes(ax, calls, min_probability, window_seconds(settings), low, high)
    if model is not None:
        predict, classes, thresholds, calibration = _model_predictor(model, cube.attrs["fingerprint"])
        probs = column_probabilities(predict, columns)[: hi - lo]
        _draw_probabilities(axes[1], times, probs, classes, thresholds, calibration)
    axes[-1].set_xlabel("time in the recording (s)")
    ax.set_xlim(times[0], times[-1] + step)
    return figure


def _for_display(columns: np.ndarray, limit: int = MAX_DISPLAY_COLUMNS) -> np.ndarray:
    """At most about ``limit`` columns: the maximum of each run of consecutive columns, so
    that a long range still shows every call (a figure has far fewer pixels than columns)."""
    factor = -(-len(columns) // limit)
    if factor <= 1:
        return columns
    padded = np.concatenate([columns, np.full((-len(columns) % factor, columns.shape[1]), -np.inf, columns.dtype)])
    return padded.reshape(-1, factor, columns.shape[1]).max(axis=1)


def _draw_boxes(ax, calls: pd.DataFrame, min_probability: float, duration: float, low: float, high: float) -> None:
    reached = species_reached(calls, min_probability)
    classes = list(reached.columns)
    for i, (time, row) in enumerate(zip(calls["time"].to_numpy(np.float64), reached.to_numpy())):
        names = [c for c, yes in zip(classes, row) if yes]
        top = calls["class"].iat[i]
        colour = _colour(top, classes.index(top) if top in classes else 0)
        ax.add_patch(Rectangle((time, low), duration, high - low, fill=False, edgecolor=colour, linewidth=1.2))
        text = "\n".join(f"{c} {float(calls[probability_column(c)].iat[i]):.2f}" for c in names)
        ax.text(time, high, text, color=colour, fontsize="x-small", va="top", ha="left", clip_on=True)


# --------------------------------------------------------------------------------------------
# Precision-recall curves and confusion, against annotated calls
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _plot_errors():
    """The evaluation's complaints about its inputs (a missing column, a class outside 1..K)
    as :class:`PlotError`: one line for the user."""
    try:
        yield
    except (ValueError, KeyError) as exc:
        raise PlotError(str(exc.args[0]) if exc.args else repr(exc)) from None


def _matched(calls: pd.DataFrame, detections: pd.DataFrame, classes, tolerance: float):
    """``(calls, detections, classes, matches)``: the tables aligned on ``recording``, the
    class names (default: the ``prob_`` columns'), and :func:`match_detections`."""
    classes = list(classes) if classes is not None else _classes_of(detections)
    if not classes:
        raise PlotError("the detections have no prob_<class> columns")
    with _plot_errors():
        calls, detections = align_recordings(calls, detections)
        matches = match_detections(calls, detections, tolerance)
    return calls, detections, classes, matches


def precision_recall(
    calls: pd.DataFrame,
    detections,
    classes: Sequence[str] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    ax=None,
    figsize: tuple[float, float] = (7.0, 6.0),
) -> Figure:
    """Precision-recall curves of the detection and of every class, their AP in the legend.

    Parameters
    ----------
    calls : pandas.DataFrame
        Annotated calls (a CSV of calls with integer classes): ``file`` or
        ``recording``, ``position``, ``class`` (1..K).
    detections : pandas.DataFrame or path
        Detected calls (:func:`pipeline.read_detections`), or a run's output folder; every
        detected call is ranked, whatever the thresholds.
    classes : sequence of str, optional
        The class names, class ``k`` of ``calls`` being ``classes[k - 1]``; default: those of
        the ``prob_`` columns.
    tolerance : float
        Matching tolerance (s), :func:`pipeline.evaluation.matching.match_detections`.
    ax : matplotlib Axes, optional
    figsize : (float, float)

    Returns
    -------
    matplotlib.figure.Figure
        One curve for the detection (black, :func:`pipeline.evaluation.metrics.detection_average_precision`)
        and one per class with at least one annotated call
        (:func:`pipeline.evaluation.metrics.class_average_precision`).

    Examples
    --------
    >>> calls = pandas.read_csv("sim/annotations.csv")                         # doctest: +SKIP
    >>> precision_recall(calls, "results/sim")                                # doctest: +SKIP
    """
    calls, detections, classes, matches = _matched(calls, _detections_table(detections), classes, tolerance)
    with _plot_errors():
        detection = detection_average_precision(calls, detections, tolerance, matches)
        per_class = class_average_precision(calls, detections, classes, tolerance, matches)
    figure, ax = _figure_and_axes(ax, figsize=figsize, layout="constrained")
    _draw_curve(ax, detection, f"detection (AP {detection.average_precision:.3f})", "black", 2.0)
    for k, (name, curve) in enumerate(per_class.per_class.items()):
        if curve.n_positives > 0:
            label = f"{name} (AP {curve.average_precision:.3f}, {curve.n_positives} calls)"
            _draw_curve(ax, curve, label, _colour(name, k), 1.2)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02))
    ax.set_title(
        f"{detection.n_positives} annotated call moments, mAP {per_class.mean_average_precision:.3f}", fontsize="medium"
    )
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    return figure


def _draw_curve(ax, curve, label: str, colour: str, width: float) -> None:
    """The curve as the AP counts it: precision ``P_n`` over the recall ``(R_{n-1}, R_n]``."""
    recall = np.concatenate([[0.0], curve.recall])
    precision = np.concatenate([[curve.precision[0] if len(curve.precision) else 0.0], curve.precision])
    ax.plot(recall, precision, drawstyle="steps-pre", color=colour, linewidth=width, label=label)


def confusion_counts(
    calls: pd.DataFrame,
    detections,
    classes: Sequence[str] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    min_score: float | None = None,
) -> pd.DataFrame:
    """How each annotated call was classified: true species against the detected top species.

    Parameters
    ----------
    calls, detections, classes, tolerance
        As :func:`precision_recall`.
    min_score : float, optional
        Only detections whose ``score`` reaches this value count (default: all of the table,
        which a run already cut at its detection threshold).

    Returns
    -------
    pandas.DataFrame
        Integer counts; index the true species (``classes``), columns ``classes`` then
        :data:`MISSED`. Each annotated call counts once: under the most probable class of the
        detection matched to its moment (:func:`pipeline.evaluation.matching.match_detections`, one
        detection per moment), or as missed. Two species calling at one moment are two calls
        of one moment, both under that detection's class.
    """
    detections = _detections_table(detections)
    if min_score is not None:
        detections = detections[detections["score"].to_numpy(np.float64) >= float(min_score)]
    calls, detections, classes, matches = _matched(calls, detections, classes, tolerance)
    with _plot_errors():
        labels = event_labels(calls, len(classes))  # (events, K): the classes at each moment
    probs = detections[[probability_column(c) for c in classes]].to_numpy(np.float64)
    predicted = np.full(len(labels), len(classes))  # column "missed" unless matched
    found = matches >= 0
    if found.any():
        predicted[matches[found]] = np.argmax(probs[found], axis=1)
    counts = np.zeros((len(classes), len(classes) + 1), dtype=np.int64)
    # One count per call: a moment with two species holds two calls, one per true class.
    event, true = np.nonzero(labels)
    np.add.at(counts, (true, predicted[event]), 1)
    return pd.DataFrame(
        counts, index=pd.Index(classes, name="true"), columns=pd.Index([*classes, MISSED], name="predicted")
    )


def confusion(
    calls: pd.DataFrame,
    detections,
    classes: Sequence[str] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    min_score: float | None = None,
    ax=None,
    figsize: tuple[float, float] = (7.5, 6.0),
) -> Figure:
    """A heat map of :func:`confusion_counts`: each cell's count written in it, its colour the
    share of its row (so that rare species read as well as common ones).

    Parameters
    ----------
    calls, detections, classes, tolerance, min_score
        As :func:`confusion_counts`.
    ax : matplotlib Axes, optional
    figsize : (float, float)

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> confusion(pandas.read_csv("sim/annotations.csv"), "results/sim")       # doctest: +SKIP
    """
    counts = confusion_counts(calls, detections, classes, tolerance=tolerance, min_score=min_score)
    share = counts.to_numpy(np.float64) / np.maximum(counts.sum(axis=1).to_numpy(np.float64), 1)[:, None]
    figure, ax = _figure_and_axes(ax, figsize=figsize, layout="constrained")
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts.to_numpy()):
        colour = "white" if share[i, j] > 0.6 else "black"
        ax.text(j, i, str(n), ha="center", va="center", fontsize="small", color=colour)
    ax.set_xticks(range(counts.shape[1]), counts.columns, rotation=45, ha="right")
    ax.set_yticks(range(counts.shape[0]), counts.index)
    ax.set(xlabel="detected as (most probable class)", ylabel="annotated species")
    n_calls, n_missed = int(counts.to_numpy().sum()), int(counts[MISSED].sum())
    ax.set_title(f"{n_calls} annotated calls, {n_missed} missed", fontsize="medium")
    figure.colorbar(image, ax=ax, label="share of the row")
    return figure


# --------------------------------------------------------------------------------------------
# Activity: calls per species per hour of night or per site
# --------------------------------------------------------------------------------------------


def timestamp_from_name(path: str) -> pd.Timestamp | None:
    """The time a recording starts from its file name (``..._YYYYMMDD_HHMMSS...``), or None.

    Examples
    --------
    >>> timestamp_from_name("site01/20260612_213015.wav")
    Timestamp('2026-06-12 21:30:15')
    >>> timestamp_from_name("noise.wav") is None
    True
    """
    match = _NAME_TIMESTAMP.search(PurePosixPath(str(path).replace("\\", "/")).name)
    if match is None:
        return None
    try:
        return pd.Timestamp(datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S"))
    except ValueError:
        return None


def _clock_time(value) -> pd.Timestamp | None:
    """A time stamp as the recorder's wall clock (time zone dropped), or None."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if pd.isna(stamp):
        return None
    return stamp.tz_localize(None) if stamp.tzinfo is not None else stamp


def _by_path(mapping: Mapping, path: str):
    if path in mapping:
        return mapping[path]
    for key, value in mapping.items():  # a key that is the end of the path: "site01/x.wav"
        if path.endswith("/" + str(key).lstrip("/")):
            return value
    return None


def recording_timestamps(files: Sequence[str], timestamps=None) -> pd.Series:
    """When each file starts, on the recorder's clock.

    Parameters
    ----------
    files : sequence of str
        Paths of recordings (as in the detections' ``file``).
    timestamps : mapping, pandas.Series or DataFrame, xarray.Dataset or path, optional
        Where the times come from: a mapping of path (or end of path) to time stamp (ISO
        8601 text or datetime); a manifest (``batml manifest``: columns ``path`` and
        ``timestamp``, from GUANO); a cube (its manifest) or the path of one. A file it has no time for falls back to its name (:func:`timestamp_from_name`).

    Returns
    -------
    pandas.Series
        Index ``files`` (distinct), values ``datetime64`` (NaT where no time is known).
    """
    files = list(dict.fromkeys(str(f) for f in files))
    import xarray as xr

    if isinstance(timestamps, (str, os.PathLike, xr.Dataset)):
        timestamps = _open(timestamps).batml.manifest
    if isinstance(timestamps, pd.DataFrame):
        timestamps = dict(zip(timestamps["path"].astype(str), timestamps["timestamp"]))
    mapping = dict(timestamps.items()) if timestamps is not None else {}
    values = []
    for path in files:
        stamp = _clock_time(_by_path(mapping, path)) if mapping else None
        values.append(stamp if stamp is not None else timestamp_from_name(path))
    index = pd.Index(files, name="file")
    return pd.Series(pd.to_datetime(values), index=index, name="timestamp", dtype="datetime64[ns]")


def night_hour(times: pd.Series) -> pd.Series:
    """Hour of night of each time: the clock hour, counted from noon so that a night is in
    order (``12 .. 23, 0 .. 11`` become ``0 .. 23``); NaN where the time is unknown."""
    return (pd.to_datetime(times).dt.hour - 12) % 24


def site_of(paths: Sequence[str]) -> pd.Series:
    """The site of each file: the first folder of its path below the folder all paths share;
    for a file in that shared folder itself, the shared folder's name.

    Examples
    --------
    >>> site_of(["/data/site01/a.wav", "/data/site02/n1/b.wav", "/data/c.wav"]).tolist()
    ['site01', 'site02', 'data']
    >>> site_of(["/data/site01/a.wav", "/data/site01/b.wav"]).tolist()
    ['site01', 'site01']
    """
    paths = [str(p) for p in paths]
    parts = [[p for p in path.replace("\\", "/").split("/") if p] for path in paths]
    folders = [p[:-1] for p in parts]
    common = min((len(f) for f in folders), default=0)
    for k in range(common):
        if len({f[k] for f in folders}) > 1:
            common = k
            break
    shared = folders[0][common - 1] if common else TOP_FOLDER
    return pd.Series([p[common] if len(p) - 1 > common else shared for p in parts], index=paths, name="site")


def activity_counts(detections, *, by: str = "hour", min_probability: float = 0.5, timestamps=None) -> pd.DataFrame:
    """Calls per species per hour of night or per site.

    Parameters
    ----------
    detections : pandas.DataFrame or path
        Detected calls (:func:`pipeline.read_detections`) or a run's output folder.
    by : {"hour", "site"}
        ``"hour"``: the clock hour at which each call was made (the recording's start plus
        the call's time), in the order of a night (noon to noon); ``"site"``: the first
        folder of each file's path below the folder all files share (:func:`site_of`).
    min_probability : float
        A call counts for every species whose probability reaches it.
    timestamps : mapping, xarray.Dataset or path, optional
        For ``by="hour"``: when each recording starts (:func:`recording_timestamps`;
        default: from the file names).

    Returns
    -------
    pandas.DataFrame
        Counts (int), one row per hour (``"21:00"``...) or site, one column per class.
        ``attrs["left_out"]`` is the number of calls left out for want of a time stamp.
    """
    if by not in ("hour", "site"):
        raise PlotError(f"by={by!r}: choose 'hour' or 'site'")
    table = _detections_table(detections, min_probability=min_probability)
    classes = _classes_of(table)
    table = table[table["probability"].to_numpy(np.float64) >= float(min_probability)]
    reached = species_reached(table, min_probability, classes).astype(np.int64)
    files = table["file"].astype(str)
    left_out = 0
    if by == "site":
        counts = reached.groupby(files.map(dict(site_of(files.unique()))).to_numpy()).sum()
    else:
        start = files.map(dict(recording_timestamps(files.unique(), timestamps))).astype("datetime64[ns]")
        known = start.notna().to_numpy()
        left_out = int((~known).sum())
        when = start[known] + pd.to_timedelta(table["time"].to_numpy(np.float64)[known], unit="s")
        hours = night_hour(when).to_numpy(np.int64)
        night = range(int(hours.min()), int(hours.max()) + 1) if len(hours) else range(0)
        counts = reached[known].groupby(hours).sum().reindex(night, fill_value=0)
        counts.index = [f"{(h + 12) % 24:02d}:00" for h in counts.index]
    counts = counts.reindex(columns=classes, fill_value=0).astype(np.int64)
    counts.index.name = by
    counts.attrs["left_out"] = left_out
    return counts


def activity(
    detections,
    *,
    by: str = "hour",
    min_probability: float = 0.5,
    timestamps=None,
    ax=None,
    figsize: tuple[float, float] = (10.0, 5.0),
) -> Figure:
    """Bars of calls per species, stacked, per hour of night or per site.

    Parameters
    ----------
    detections, by, min_probability, timestamps
        As :func:`activity_counts`.
    ax : matplotlib Axes, optional
    figsize : (float, float)

    Returns
    -------
    matplotlib.figure.Figure
        One bar series (and legend entry) per species with at least one call.

    Examples
    --------
    >>> calls = pipeline.read_detections("results/night")                      # doctest: +SKIP
    >>> activity(calls, by="hour", timestamps="results/night/cube.zarr")       # doctest: +SKIP
    """
    counts = activity_counts(detections, by=by, min_probability=min_probability, timestamps=timestamps)
    figure, ax = _figure_and_axes(ax, figsize=figsize, layout="constrained")
    bottom = np.zeros(len(counts))
    positions = np.arange(len(counts))
    for k, name in enumerate(counts.columns):
        values = counts[name].to_numpy()
        if values.sum() == 0:
            continue
        ax.bar(positions, values, bottom=bottom, color=_colour(name, k), label=name, width=0.8)
        bottom += values
    ax.set_xticks(positions, counts.index, rotation=45 if by == "site" else 0, ha="right" if by == "site" else "center")
    ax.set(xlabel="hour of night (start of the hour)" if by == "hour" else "site", ylabel="calls")
    title = f"{int(counts.to_numpy().sum())} species calls (probability >= {min_probability:g})"
    if counts.attrs["left_out"]:
        title += f"; {counts.attrs['left_out']} calls of recordings without a time stamp left out"
    ax.set_title(title, fontsize="medium")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    return figure
