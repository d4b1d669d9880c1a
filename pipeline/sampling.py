"""Training samples: which cube windows a model learns from, and what it should answer.

A model window is ``window_columns`` consecutive cube columns (the reference system's 40-frame, 23 ms
patch zoomed by 0.5: 20 columns) starting at the column of a time::

    column_of(t) = floor(t / step + 1e-9)

where ``step`` is the recording's column step (:meth:`pipeline.config.SpectrogramSettings.column_step_s`,
about 1.16 ms). A call at position ``p`` (its start, real seconds) is seen by the window
starting at ``column_of(p)``.

The reference system's sampling, kept here:

* **Positives.** Every annotated call gives three windows, at its position shifted by
  -1.5, 0 and +1.5 ms (the reference system's -15/0/+15 ms in time-expanded x10 audio). Calls of several
  species at the same position are one *event* whose target is multi-hot.
* **Negatives.** Three per annotated call, drawn uniformly over the recording, whose start
  lies at least half a window plus the largest shift away from every call.

Where the reference system looped forever looking for negatives in a densely annotated recording, the
draws here are bounded (``max_attempts`` per wanted negative, drawn in vectorised batches):
a recording with no room for negatives gives fewer, or none, and says so by their number.

Targets have ``K + 1`` columns: column 0 is "not call" (1 for a negative, 0 for a positive)
and columns 1..K are the classes. A call whose species is unknown (class 0: a bat, species not
given) has NaN in the class columns it may belong to: the networks' loss and the boosters skip
those targets (it is learned for detection only).

Beyond the reference system: **labelled negatives** (insects, noise... that an annotator marked)
give windows at their positions, shifted as the calls' are, with target "not call"; and when a
recording's **annotated windows** are known (clips of a longer recording), the random negatives
are drawn inside them only: everything outside was never looked at, so it is not known to hold
no bat.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.annotations.matching import match_recordings
from pipeline.config import SpectrogramSettings
from pipeline.io.annotations import RecordingCalls

#: Added to ``t / step`` before flooring, so that a time lying on a column's start (up to
#: floating point error) maps to that column and not the one before.
COLUMN_EPSILON = 1e-9


@dataclass(frozen=True)
class SamplingSettings:
    """How the training windows of annotated recordings are drawn (the reference system's numbers).

    Parameters
    ----------
    shifts_s
        Shifts (real seconds) of a call's position giving its positive windows.
    negatives_per_call
        Negative windows wanted per annotated call (per entry of the annotations: two
        species calling at the same moment count as two calls).
    window_columns
        Cube columns per model window.
    max_attempts
        Candidate draws allowed per wanted negative; the total number of draws for a
        recording is at most ``max_attempts * n_wanted``.
    """

    shifts_s: tuple[float, ...] = (-0.0015, 0.0, 0.0015)
    negatives_per_call: int = 3
    window_columns: int = 20
    max_attempts: int = 50

    def exclusion_s(self, step_s: float) -> float:
        """Least distance (s) between a negative window's start and any call position.

        Half a window plus the largest absolute shift (the reference system's rule).
        """
        return 0.5 * self.window_columns * step_s + max((abs(s) for s in self.shifts_s), default=0.0)


def column_of(times, step_s: float) -> np.ndarray:
    """The column (within its recording) whose window starts at each time.

    Parameters
    ----------
    times : array_like
        Real-time seconds from the start of the recording.
    step_s : float
        Column step of the recording, seconds.

    Returns
    -------
    numpy.ndarray
        int64 columns ``floor(t / step + 1e-9)`` (negative for negative times).
    """
    return np.floor(np.asarray(times, dtype=np.float64) / step_s + COLUMN_EPSILON).astype(np.int64)


def call_targets(positions, classes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge the calls at the same position into events with a multi-hot target.

    Parameters
    ----------
    positions : array_like
        Start of each annotated call, real seconds, shape ``(n,)``.
    classes : array_like or None
        Class (1..K) of each call, 0 for a call of unknown species; ``None`` for
        detection-only data.
    n_classes : int
        Number of classes K.

    Returns
    -------
    event_positions : numpy.ndarray
        float64, shape ``(m,)``: the distinct positions, increasing.
    multi_hot : numpy.ndarray
        float32, shape ``(m, K)``: 1 where a call of that class starts at the event, 0 where
        none does, NaN (unknown) in the other columns of an event with a call of unknown
        species (all 0 for detection-only data).

    Raises
    ------
    ValueError
        If a class lies outside 1..K or ``classes`` and ``positions`` differ in length.

    Notes
    -----
    Positions are merged only when exactly equal, which is how the reference system's format encodes
    simultaneous calls (one entry per species, same position).
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1)
    event_positions, event_of_call = np.unique(positions, return_inverse=True)
    multi_hot = np.zeros((len(event_positions), n_classes), dtype=np.float32)
    if classes is not None:
        classes = np.asarray(classes).reshape(-1)
        if classes.shape != positions.shape:
            raise ValueError(f"{classes.size} classes for {positions.size} positions")
        if classes.size and not np.all((classes >= 0) & (classes <= n_classes)):
            raise ValueError(f"a class lies outside 1..{n_classes} (0: unknown species)")
        known = classes >= 1
        multi_hot[np.unique(event_of_call[~known])] = np.nan
        multi_hot[event_of_call[known], classes[known].astype(np.int64) - 1] = 1.0
    return event_positions, multi_hot


def positive_windows(
    positions, classes, n_classes: int, step_s: float, n_columns: int, settings: SamplingSettings = SamplingSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """The positive windows of one recording: each event at each shift.

    Parameters
    ----------
    positions, classes, n_classes
        As for :func:`call_targets`.
    step_s : float
        Column step of the recording, seconds.
    n_columns : int
        Columns of the recording.
    settings : SamplingSettings

    Returns
    -------
    starts : numpy.ndarray
        int64 first column (within the recording) of each window, event by event, shift by
        shift; a window is kept only when it lies wholly in the recording
        (``0 <= start <= n_columns - window_columns``).
    targets : numpy.ndarray
        float32, shape ``(n, K + 1)``: "not call" 0, then the event's multi-hot classes.
    """
    event_positions, multi_hot = call_targets(positions, classes, n_classes)
    shifts = np.asarray(settings.shifts_s, dtype=np.float64)
    starts = column_of(event_positions[:, None] + shifts[None, :], step_s).reshape(-1)
    event = np.repeat(np.arange(len(event_positions)), len(shifts))
    inside = (starts >= 0) & (starts <= n_columns - settings.window_columns)
    targets = np.zeros((int(inside.sum()), n_classes + 1), dtype=np.float32)
    targets[:, 1:] = multi_hot[event[inside]]
    return starts[inside], targets


def negative_windows(
    positions,
    step_s: float,
    n_columns: int,
    n_wanted: int,
    rng: np.random.Generator,
    settings: SamplingSettings = SamplingSettings(),
    windows: np.ndarray | None = None,
) -> np.ndarray:
    """Uniformly drawn window starts far from every call, with a bounded number of draws.

    Parameters
    ----------
    positions : array_like
        Start of every annotated call of the recording (simultaneous ones included), seconds.
    step_s : float
        Column step of the recording, seconds.
    n_columns : int
        Columns of the recording.
    n_wanted : int
        Negatives wanted.
    rng : numpy.random.Generator
    settings : SamplingSettings
    windows : array, shape (m, 2), optional
        The annotated parts of the recording (``[start, end)``, real s): a negative window
        must lie wholly inside one of them. Default: the whole recording.

    Returns
    -------
    numpy.ndarray
        int64 starts (within the recording), in the order drawn, at most ``n_wanted`` of
        them; a start ``s`` satisfies ``|s * step_s - p| >= settings.exclusion_s(step_s)``
        for every position ``p``. Candidates are drawn uniformly (with replacement) from
        the starts whose window lies in the recording (and in an annotated window) in
        batches, at most ``settings.max_attempts * n_wanted`` in all; fewer than wanted come
        back when the recording has little room between its calls, none when it has none.
    """
    allowed = allowed_starts(n_columns, step_s, settings.window_columns, windows)
    if n_wanted <= 0 or len(allowed) == 0:
        return np.zeros(0, dtype=np.int64)
    calls = np.sort(np.asarray(positions, dtype=np.float64).reshape(-1))
    exclusion = settings.exclusion_s(step_s)
    budget = settings.max_attempts * n_wanted
    kept: list[np.ndarray] = []
    n_kept = drawn = 0
    while n_kept < n_wanted and drawn < budget:
        size = min(budget - drawn, max(4 * (n_wanted - n_kept), 256))
        candidates = allowed[rng.integers(0, len(allowed), size=size, dtype=np.int64)]
        drawn += size
        valid = candidates[far_from_calls(candidates * step_s, calls, exclusion)]
        kept.append(valid[: n_wanted - n_kept])
        n_kept += len(kept[-1])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def allowed_starts(n_columns: int, step_s: float, window_columns: int, windows: np.ndarray | None) -> np.ndarray:
    """The columns where a window may start: inside the recording and, when the annotated
    windows (``[start, end)`` real s) are given, wholly inside one of them (int64, sorted)."""
    last = int(n_columns) - int(window_columns)
    if last < 0:
        return np.zeros(0, dtype=np.int64)
    if windows is None:
        return np.arange(last + 1, dtype=np.int64)
    ranges = [
        np.arange(max(int(np.ceil(start / step_s - COLUMN_EPSILON)), 0),
                  min(int(np.floor(end / step_s + COLUMN_EPSILON)) - int(window_columns), last) + 1)
        for start, end in np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    ]  # fmt: skip
    return np.unique(np.concatenate(ranges)) if ranges else np.zeros(0, dtype=np.int64)


def far_from_calls(times: np.ndarray, sorted_positions: np.ndarray, exclusion_s: float) -> np.ndarray:
    """Whether each time lies at least ``exclusion_s`` from every (sorted) call position."""
    if len(sorted_positions) == 0:
        return np.ones(len(times), dtype=bool)
    after = np.searchsorted(sorted_positions, times)  # first position >= time
    next_gap = sorted_positions[np.minimum(after, len(sorted_positions) - 1)] - times
    previous_gap = times - sorted_positions[np.maximum(after - 1, 0)]
    next_ok = (after == len(sorted_positions)) | (next_gap >= exclusion_s)
    previous_ok = (after == 0) | (previous_gap >= exclusion_s)
    return next_ok & previous_ok


def recording_samples(
    calls: RecordingCalls,
    n_classes: int,
    step_s: float,
    n_columns: int,
    rng: np.random.Generator,
    settings: SamplingSettings = SamplingSettings(),
) -> tuple[np.ndarray, np.ndarray]:
    """The positive and negative windows of one annotated recording.

    Parameters
    ----------
    calls : RecordingCalls
    n_classes : int
        Number of classes K.
    step_s : float
        Column step of the recording, seconds.
    n_columns : int
        Columns of the recording in the cube.
    rng : numpy.random.Generator
        Draws the negatives.
    settings : SamplingSettings

    Returns
    -------
    starts : numpy.ndarray
        int64 first column of each window within the recording: positives, then negatives.
    targets : numpy.ndarray
        float32, shape ``(n, K + 1)``.

    Notes
    -----
    ``negatives_per_call`` negatives are wanted per annotated call (an entry of the
    annotations), as in the reference system, not per event: a moment where three species call at once
    asks for nine.
    """
    starts, targets = positive_windows(calls.positions, calls.classes, n_classes, step_s, n_columns, settings)
    n_wanted = settings.negatives_per_call * len(calls.positions)
    drawn = negative_windows(calls.positions, step_s, n_columns, n_wanted, rng, settings, calls.windows)
    labelled = labelled_negative_windows(calls.negatives, calls.positions, step_s, n_columns, settings)
    negatives = np.concatenate([labelled, drawn])
    negative_targets = np.zeros((len(negatives), n_classes + 1), dtype=np.float32)
    negative_targets[:, 0] = 1.0
    return np.concatenate([starts, negatives]), np.concatenate([targets, negative_targets])


def labelled_negative_windows(
    negatives, positions, step_s: float, n_columns: int, settings: SamplingSettings = SamplingSettings()
) -> np.ndarray:
    """Windows at labelled sounds that are not calls (insects, noise...), at the calls' shifts.

    A labelled sound closer to a call than :meth:`SamplingSettings.exclusion_s` gives no
    window (the window would hold the call too); int64 starts within the recording.
    """
    if negatives is None or len(negatives) == 0:
        return np.zeros(0, dtype=np.int64)
    negatives = np.asarray(negatives, dtype=np.float64).reshape(-1)
    calls = np.sort(np.asarray(positions, dtype=np.float64).reshape(-1))
    negatives = negatives[far_from_calls(negatives, calls, settings.exclusion_s(step_s))]
    shifts = np.asarray(settings.shifts_s, dtype=np.float64)
    starts = column_of(negatives[:, None] + shifts[None, :], step_s).reshape(-1)
    return starts[(starts >= 0) & (starts <= n_columns - settings.window_columns)]


@dataclass(frozen=True, eq=False)
class Samples:
    """Training windows of a cube: where each starts and what the model should answer.

    Parameters
    ----------
    columns
        int64 global cube column of each window's first column.
    recording
        int32 cube recording index of each window.
    targets
        float32, shape ``(n, K + 1)``: "not call", then the classes.
    """

    columns: np.ndarray
    recording: np.ndarray
    targets: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "columns", np.asarray(self.columns, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "recording", np.asarray(self.recording, dtype=np.int32).reshape(-1))
        object.__setattr__(self, "targets", np.asarray(self.targets, dtype=np.float32))
        if self.targets.ndim != 2 or not len(self.columns) == len(self.recording) == len(self.targets):
            raise ValueError(
                f"samples need as many columns ({len(self.columns)}), recordings ({len(self.recording)}) "
                f"and target rows ({self.targets.shape}), targets being 2-D"
            )

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def n_outputs(self) -> int:
        """Target columns, K + 1."""
        return self.targets.shape[1]

    @property
    def is_negative(self) -> np.ndarray:
        """Whether each window is a negative ("not call" target 1)."""
        return self.targets[:, 0] == 1

    @classmethod
    def empty(cls, n_classes: int) -> "Samples":
        """No samples, with ``n_classes + 1`` target columns."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, n_classes + 1), np.float32))

    @classmethod
    def concatenate(cls, parts: Sequence["Samples"]) -> "Samples":
        """The samples of ``parts``, one after the other (at least one part)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        return cls(
            np.concatenate([p.columns for p in parts]),
            np.concatenate([p.recording for p in parts]),
            np.concatenate([p.targets for p in parts]),
        )

    def subset(self, selection) -> "Samples":
        """The samples picked by a boolean mask or an array of indices (in that order)."""
        selection = np.asarray(selection)
        return Samples(self.columns[selection], self.recording[selection], self.targets[selection])

    def shuffle(self, rng: np.random.Generator) -> "Samples":
        """The samples in a random order."""
        return self.subset(rng.permutation(len(self)))


def cube_column_steps(cube) -> np.ndarray:
    """Column step (s) of every recording of a cube, from its stored spectrogram settings."""
    settings = SpectrogramSettings.from_dict(json.loads(cube.attrs["spectrogram_settings"]), source="cube")
    return np.array([settings.column_step_s(float(rate)) for rate in cube["real_rate"].values])


def build_samples(
    recordings: Sequence[RecordingCalls],
    cube,
    n_classes: int,
    settings: SamplingSettings = SamplingSettings(),
    seed: int = 0,
) -> tuple[Samples, list[str]]:
    """The training samples of annotated recordings, as windows of a cube.

    Parameters
    ----------
    recordings : sequence of RecordingCalls
        Annotated recordings; ``file`` is the name without extension, possibly with
        folders (``site01/20260612_213015``), POSIX separators.
    cube : xarray.Dataset
        An opened cube (:func:`pipeline.io.cube.open_cube`); only its small tables are read.
    n_classes : int
        Number of classes K.
    settings : SamplingSettings
    seed : int
        Seed of the negatives: recording ``i`` of ``recordings`` draws from the ``i``-th
        generator spawned by ``numpy.random.default_rng(seed)``.

    Returns
    -------
    samples : Samples
        Positives then negatives of each recording, recording by recording.
    problems : list of str
        One line per annotated recording left out, as :func:`match_recordings` gives them
        (``'<file>: not in the cube'``, ``'<file>: <status>'``, ``'<file>: ambiguous, ...'``).
    """
    indices, problems = match_recordings(cube, [calls.file for calls in recordings])
    cube_starts = cube["start"].values.astype(np.int64)
    cube_n_columns = cube["n_columns"].values.astype(np.int64)
    steps = cube_column_steps(cube)
    rngs = np.random.default_rng(seed).spawn(len(recordings))
    parts = []
    for calls, r, rng in zip(recordings, indices, rngs):
        if r is None:
            continue
        starts, targets = recording_samples(calls, n_classes, steps[r], int(cube_n_columns[r]), rng, settings)
        parts.append(Samples(cube_starts[r] + starts, np.full(len(starts), r, dtype=np.int32), targets))
    samples = Samples.concatenate(parts) if parts else Samples.empty(n_classes)
    return samples, problems
