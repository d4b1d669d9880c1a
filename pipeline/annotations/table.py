"""The canonical table of annotated calls that every annotation reader returns.

Every reader of :mod:`pipeline.annotations` turns its format into an :class:`AnnotationSet`:
a table of labelled sound events (``calls``), the parts of the recordings that were
annotated (``windows``), the class order the source declares (``classes``) and the name of
the format (``source``). Times and frequencies in it are always **real** (time expansion
undone): seconds from the start of the recording and hertz.

The columns of ``calls`` are written down once, in :data:`CALL_COLUMNS`, and checked in one
function, :func:`validate_calls`:

============= ======== ===================================================================
``file``      str      the recording, named as the annotations name it, relative to the
                       audio folder (with or without its extension, as the source gives it)
``position``  float64  start of the event, s (real time)
``end``       float64  end of the event, s; NaN when the source does not say
``low_freq``  float64  lowest frequency of the event, Hz (real); NaN when unknown
``high_freq`` float64  highest frequency, Hz (real); NaN when unknown
``class``     str      the class as the source names it after mapping codes to names (any
                       characters); missing for a detection-only label ("a bat", species
                       unknown)
``event``     str      what kind of sound: one of :data:`EVENTS`
``split``     str      ``train`` or ``test``, or missing when the source does not split
``duration``  float64  length of the recording, s (real); NaN when unknown
============= ======== ===================================================================

Two rows at one position stay two rows (two species calling at once); a reader never merges
them. (The Tadarida reader joins the elements of one call of one species, which Tadarida's
detector splits: :func:`pipeline.annotations.tadarida.join_elements`.) ``windows`` has the
columns of :data:`WINDOW_COLUMNS`: ``file``, ``start``, ``end`` (s, real) and ``split`` (as in
``calls``); ``None`` means that every recording listed in ``calls`` was annotated whole.

**Kinds of sound** (:data:`EVENTS`): ``echolocation`` (a bat's search or approach call),
``buzz`` (feeding buzz), ``social`` (bat social call), ``insect``, ``bird``, ``noise``
(mechanical, electrical, wind, rain...) and ``other`` (any other sound, or a sound whose kind
the source leaves open, such as batdetect2's ``Unknown`` event). Sources name them in many ways;
:func:`event_name` maps the usual words (``Echolocation``, ``echolo``, ``Feeding``, ``mec``,
``bush-cricket``...) to these. :func:`select_calls` decides which rows are learned as bat calls
and which as labelled negatives: never a buzz, social call, insect, bird or noise silently as a
bat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.io.annotations import AnnotationError

#: Text columns hold ``str`` with NaN for missing values (pandas' ``str`` dtype).
TEXT = pd.StringDtype(na_value=np.nan)

#: The columns of ``AnnotationSet.calls``, in order, with their dtypes.
CALL_COLUMNS: dict[str, object] = {
    "file": TEXT,
    "position": np.float64,
    "end": np.float64,
    "low_freq": np.float64,
    "high_freq": np.float64,
    "class": TEXT,
    "event": TEXT,
    "split": TEXT,
    "duration": np.float64,
}
#: Columns that a reader must fill; the others default to missing (``event``: echolocation).
REQUIRED_CALL_COLUMNS = ("file", "position")

#: The columns of ``AnnotationSet.windows``, in order, with their dtypes.
WINDOW_COLUMNS: dict[str, object] = {"file": TEXT, "start": np.float64, "end": np.float64, "split": TEXT}

#: The kinds of sound an annotation can be.
EVENTS = ("echolocation", "buzz", "social", "insect", "bird", "noise", "other")
#: Kinds of sound that are never a bat: always labelled negatives in :func:`select_calls`.
NOT_BAT_EVENTS = ("insect", "bird", "noise")
#: Kinds of bat sound that are not echolocation: negatives, classes or dropped, as the user says.
NON_ECHOLOCATION_EVENTS = ("buzz", "social")
SPLITS = ("train", "test")

#: Words that sources use for each kind of sound (compared case-insensitively, spaces, ``-``
#: and ``_`` alike).
EVENT_WORDS: dict[str, str] = {
    **{word: "echolocation" for word in ("echolocation", "echolo", "echo", "search", "search call",
                                          "approach", "call", "bat call", "pass")},
    **{word: "buzz" for word in ("buzz", "feeding", "feeding buzz", "terminal buzz", "capture")},
    **{word: "social" for word in ("social", "social call", "soc")},
    **{word: "insect" for word in ("insect", "insects", "bush cricket", "bushcricket", "cricket",
                                    "ground cricket", "grasshopper", "cicada", "moth", "bee",
                                    "beetle", "fly", "orthoptera", "katydid")},
    **{word: "bird" for word in ("bird", "birds", "piaf")},
    **{word: "noise" for word in ("noise", "mec", "mechanical", "mechanical noise", "electrical",
                                   "wind", "rain", "not bat", "non bat", "no bat", "nonbat", "background")},
    **{word: "other" for word in ("other", "unknown", "frog", "amphibian", "other mammal", "rodent")},
}  # fmt: skip

#: Class labels that name no species: the row is a call of a bat of unknown species
#: (detection only). Compared case-insensitively.
UNKNOWN_CLASS_LABELS = ("", "bat", "bats", "unknown", "unknown bat", "unidentified", "?", "na", "n/a",
                        "none", "nan", "chiroptera", "chiroptera sp.", "__unknown__")


def _word(text: str) -> str:
    return " ".join(str(text).strip().lower().replace("-", " ").replace("_", " ").split())


def event_name(text: str | None) -> str | None:
    """The kind of sound (one of :data:`EVENTS`) a source's word names, or None if unknown.

    Parameters
    ----------
    text : str or None
        The source's word (``"Echolocation"``, ``"echolo"``, ``"Feeding"``, ``"mec"``...).

    Returns
    -------
    str or None
        One of :data:`EVENTS`; None for a word not in :data:`EVENT_WORDS` (or None).
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    return EVENT_WORDS.get(_word(text))


def is_unknown_class(label) -> bool:
    """Whether a class label names no species (``"Bat"``, ``"Unknown"``, empty...)."""
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return True
    return _word(label) in UNKNOWN_CLASS_LABELS


def class_and_event(label, event: str | None = None) -> tuple[str | None, str]:
    """Split a free-text label into a class and a kind of sound.

    Parameters
    ----------
    label
        The class label as the source writes it (a species, ``"Bat"``, ``"Noise"``...).
    event : str, optional
        The kind of sound the source gives separately (one of :data:`EVENTS`), if any.

    Returns
    -------
    (class, event)
        A label that names no species (:func:`is_unknown_class`) gives no class; a label that
        is a kind of sound other than echolocation (``"Noise"``, ``"Insect"``, ``"Social"``...)
        gives no class and that kind, unless the source gave the kind itself; any other label
        is the class, kept exactly as written (spaces, case, non-ASCII characters).
    """
    if is_unknown_class(label):
        return None, event or "echolocation"
    kind = event_name(label)
    if kind is not None and kind not in ("echolocation", "other"):
        return None, event or kind
    return str(label), event or "echolocation"


# ---------------------------------------------------------------------------------------------
# Parsing and checking


def _locator(where: Sequence[str] | None, origin: str, index: int) -> str:
    return where[index] if where is not None else f"{origin}: call {index + 1}"


def parse_numbers(values: Iterable, *, column: str, where: Sequence[str], required: bool = True) -> np.ndarray:
    """Numbers from text, each bad one reported with where it was.

    Parameters
    ----------
    values : iterable
        Text or numbers, one per row.
    column : str
        The column's name, for the message.
    where : sequence of str
        For each row, where it is (``"table.txt, line 7"``).
    required : bool
        If False, an empty value gives NaN; if True, it is an error.

    Returns
    -------
    numpy.ndarray
        float64, one per value.

    Raises
    ------
    AnnotationError
        ``"<where>: <column> '<value>' is not a number"`` (or ``"... is empty"``) for the first
        bad value.
    """
    out = []
    for i, value in enumerate(values):
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise AnnotationError(f"{where[i]}: {column} is empty")
            out.append(math.nan)
            continue
        try:
            number = float(value.strip().replace(",", ".") if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise AnnotationError(f"{where[i]}: {column} {str(value)!r} is not a number") from None
        if math.isnan(number) and required:
            raise AnnotationError(f"{where[i]}: {column} is not a number")
        out.append(number)
    return np.asarray(out, dtype=np.float64)


def _text_column(values: pd.Series) -> pd.Series:
    """``values`` as the ``str`` dtype: missing stays missing (never the text ``"nan"``)."""
    missing = values.isna()
    text = values.astype(object).where(missing, values.astype(object).map(str))
    return pd.Series(text.where(~missing, np.nan), index=values.index, dtype=TEXT)


def empty_calls() -> pd.DataFrame:
    """A table of calls with no row, with the columns and dtypes of :data:`CALL_COLUMNS`."""
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in CALL_COLUMNS.items()})


def validate_calls(calls: pd.DataFrame, *, where: Sequence[str] | None = None, origin: str = "calls") -> pd.DataFrame:
    """Check a table of calls and return it with the canonical columns, order and dtypes.

    Parameters
    ----------
    calls : pandas.DataFrame
        At least ``file`` and ``position``; the other columns of :data:`CALL_COLUMNS` are added
        when absent (missing values; ``event`` = ``echolocation``); other columns are dropped.
    where : sequence of str, optional
        For each row, where it came from (``"a.Table.1.selections.txt, line 4"``), used in the
        messages; without it, rows are named ``"<origin>: call <n>"``.
    origin : str
        The source named in messages when ``where`` is not given.

    Returns
    -------
    pandas.DataFrame
        A new table with exactly the columns of :data:`CALL_COLUMNS`, in order, and a
        ``RangeIndex``.

    Raises
    ------
    AnnotationError
        One line naming the row and the reason: a missing required column, an empty ``file``,
        a position that is negative or not a finite number, an end before the start, a negative
        frequency or a low frequency above the high one, a negative duration, an unknown
        ``event`` or ``split``.
    """
    missing = [name for name in REQUIRED_CALL_COLUMNS if name not in calls.columns]
    if missing:
        raise AnnotationError(f"{origin}: missing column(s) {', '.join(missing)}")
    n = len(calls)
    table = calls.reset_index(drop=True)
    out = {}
    for name, dtype in CALL_COLUMNS.items():
        if name in table.columns:
            column = table[name]
        elif name == "event":
            column = pd.Series(["echolocation"] * n, dtype=object)
        else:
            column = pd.Series([np.nan] * n, dtype=np.float64 if dtype is np.float64 else object)
        if dtype is np.float64:
            try:
                out[name] = pd.Series(np.asarray(column, dtype=np.float64))
            except (TypeError, ValueError):
                bad = next(i for i, value in enumerate(column) if not _is_number(value))
                raise AnnotationError(
                    f"{_locator(where, origin, bad)}: {name} {column.iloc[bad]!r} is not a number"
                ) from None
        else:
            out[name] = _text_column(column)
    table = pd.DataFrame(out)
    checks: list[tuple[np.ndarray, Callable[[int], str]]] = [
        (table["file"].isna().to_numpy() | (table["file"].fillna("").str.strip() == "").to_numpy(),
         lambda i: "the recording's name is empty"),
        (~np.isfinite(table["position"].to_numpy()),
         lambda i: f"start time {float(table['position'][i])!r} is not a finite number"),
        (table["position"].to_numpy() < 0, lambda i: f"start time {float(table['position'][i])!r} s is negative"),
        (table["end"].notna().to_numpy() & ~np.isfinite(table["end"].fillna(0).to_numpy()),
         lambda i: f"end time {float(table['end'][i])!r} is not a finite number"),
        (table["end"].to_numpy() < table["position"].to_numpy(),
         lambda i: f"end time {float(table['end'][i])!r} s is before the start time {float(table['position'][i])!r} s"),
        ((table["low_freq"].to_numpy() < 0) | (table["high_freq"].to_numpy() < 0),
         lambda i: f"negative frequency ({float(table['low_freq'][i])!r}..{float(table['high_freq'][i])!r} Hz)"),
        (table["low_freq"].to_numpy() > table["high_freq"].to_numpy(),
         lambda i: f"low frequency {float(table['low_freq'][i])!r} Hz is above the high frequency {float(table['high_freq'][i])!r} Hz"),
        (table["duration"].to_numpy() < 0, lambda i: f"recording duration {float(table['duration'][i])!r} s is negative"),
        (~table["event"].isin(EVENTS).to_numpy(),
         lambda i: f"unknown kind of sound {table['event'][i]!r}; expected one of {', '.join(EVENTS)}"),
        (table["split"].notna().to_numpy() & ~table["split"].isin(SPLITS).to_numpy(),
         lambda i: f"unknown split {table['split'][i]!r}; expected train or test"),
    ]  # fmt: skip
    for bad, reason in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise AnnotationError(f"{_locator(where, origin, i)}: {reason(i)}")
    return table


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def validate_windows(windows: pd.DataFrame | None, *, origin: str = "windows") -> pd.DataFrame | None:
    """Check a table of annotated windows; return it with the columns of :data:`WINDOW_COLUMNS`.

    Raises
    ------
    AnnotationError
        For a missing column, an empty ``file``, a start that is negative or not finite, an end
        before its start, or an unknown ``split``.
    """
    if windows is None:
        return None
    missing = [name for name in ("file", "start", "end") if name not in windows.columns]
    if missing:
        raise AnnotationError(f"{origin}: annotated windows lack column(s) {', '.join(missing)}")
    table = windows.reset_index(drop=True)
    try:
        out = pd.DataFrame(
            {
                "file": _text_column(table["file"]),
                "start": pd.Series(np.asarray(table["start"], dtype=np.float64)),
                "end": pd.Series(np.asarray(table["end"], dtype=np.float64)),
                "split": _text_column(table["split"] if "split" in table else pd.Series([np.nan] * len(table), dtype=object)),
            }
        )
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"{origin}: annotated window times are not numbers ({exc})") from None
    start, end = out["start"].to_numpy(), out["end"].to_numpy()
    checks = [
        (out["file"].fillna("").str.strip().to_numpy() == "", "the recording's name is empty"),
        (~np.isfinite(start) | (start < 0), "start is negative or not a finite number"),
        (~np.isfinite(end) | (end < start), "end is before the start or not a finite number"),
        (out["split"].notna().to_numpy() & ~out["split"].isin(SPLITS).to_numpy(), "unknown split"),
    ]
    for bad, reason in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise AnnotationError(
                f"{origin}: annotated window {i + 1} ({out['file'][i]} {float(start[i])!r}..{float(end[i])!r} s): {reason}"
            )
    return out


def to_real_time(calls: pd.DataFrame, time_expansion: float) -> pd.DataFrame:
    """Calls with times divided and frequencies multiplied by a time-expansion factor.

    Parameters
    ----------
    calls : pandas.DataFrame
        Times (``position``, ``end``, ``duration``) and frequencies (``low_freq``,
        ``high_freq``) as the file states them, for audio slowed down ``time_expansion`` times.
    time_expansion : float
        The factor (10 for a x10 time-expanded recording); 1 leaves the table as it is.

    Returns
    -------
    pandas.DataFrame
        A copy in real time and real hertz.
    """
    factor = check_time_expansion(time_expansion)
    out = calls.copy()
    for name in ("position", "end", "duration", "start"):
        if name in out.columns:
            out[name] = out[name].astype(np.float64) / factor
    for name in ("low_freq", "high_freq"):
        if name in out.columns:
            out[name] = out[name].astype(np.float64) * factor
    return out


def check_time_expansion(time_expansion) -> float:
    """The time-expansion factor as a positive float; a ValueError otherwise."""
    try:
        factor = float(time_expansion)
    except (TypeError, ValueError):
        raise AnnotationError(f"time expansion {time_expansion!r} is not a number") from None
    if not (math.isfinite(factor) and factor > 0):
        raise AnnotationError(f"time expansion {time_expansion!r} must be a positive number")
    return factor


# ---------------------------------------------------------------------------------------------
# The set


@dataclass(eq=False)
class AnnotationSet:
    """Annotated calls read from one source, in real time.

    Attributes
    ----------
    calls : pandas.DataFrame
        One row per labelled sound event, with the columns of :data:`CALL_COLUMNS`.
    windows : pandas.DataFrame or None
        The annotated parts of the recordings (``file``, ``start``, ``end`` in real s, and
        ``split``); outside them nothing is known. None: every recording listed in ``calls``
        was annotated whole.
    classes : list of str or None
        The class order the source declares (a names file, the reference system's seven groups, a
        project's tag list); None when the source declares none.
    source : str
        The format's name (``"raven"``, ``"aoef"``, ``"tadarida"``...).
    skipped : list of str
        One line per thing the reader left out or could not resolve, naming the file and the
        reason (files not annotated, labels of a recording whose audio is missing...).
    """

    calls: pd.DataFrame
    windows: pd.DataFrame | None
    classes: list[str] | None
    source: str
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.calls = validate_calls(self.calls, origin=self.source)
        self.windows = validate_windows(self.windows, origin=self.source)
        if self.classes is not None:
            self.classes = [str(name) for name in self.classes]
            if len(set(self.classes)) != len(self.classes):
                raise AnnotationError(f"{self.source}: the class list names a class twice")


def select_calls(annotation_set: AnnotationSet, non_echolocation: str = "negative") -> pd.DataFrame:
    """The calls to learn from: bat calls as positives and labelled negatives.

    Parameters
    ----------
    annotation_set : AnnotationSet
        What a reader returned.
    non_echolocation : {"negative", "class", "drop"}
        What to do with bat sounds that are not echolocation (``buzz`` and ``social`` rows):
        ``"negative"`` (default) learns them as labelled negatives (not a call to detect);
        ``"class"`` learns them as positives of a class named after the kind of sound
        (``"buzz"``, ``"social"``), whatever species the source gave; ``"drop"`` leaves them out.

    Returns
    -------
    pandas.DataFrame
        The selected rows of ``annotation_set.calls`` (same columns, original order) plus
        ``role``: ``"positive"`` for echolocation calls (their class as given; a detection-only
        row keeps a missing class) and, with ``"class"``, buzz and social rows; ``"negative"``
        for insect, bird and noise rows always, and buzz and social rows with ``"negative"``.
        Rows of kind ``other`` (a sound the source could not place) are left out: they are never
        learned as a bat, nor as a sure negative. Two rows at one position stay two rows.

    Notes
    -----
    A buzz, social call, insect, bird or noise is never learned silently as a bat call.
    """
    if non_echolocation not in ("negative", "class", "drop"):
        raise ValueError(f"non_echolocation={non_echolocation!r}: expected 'negative', 'class' or 'drop'")
    calls = annotation_set.calls
    event = calls["event"]
    bat_other = event.isin(NON_ECHOLOCATION_EVENTS)
    positive = (event == "echolocation") | (bat_other if non_echolocation == "class" else False)
    negative = event.isin(NOT_BAT_EVENTS) | (bat_other if non_echolocation == "negative" else False)
    out = calls[positive | negative].copy()
    out["role"] = pd.Series(np.where(positive[out.index], "positive", "negative"), index=out.index, dtype=TEXT)
    if non_echolocation == "class":
        as_class = out["event"].isin(NON_ECHOLOCATION_EVENTS)
        out.loc[as_class, "class"] = out.loc[as_class, "event"]
    return out


def class_names_from(labels: Iterable, names: Sequence[str] | None, *, where: Sequence[str],
                     default: Sequence[str]) -> tuple[list, list[str] | None]:
    """Integer classes 1..K as names.

    Parameters
    ----------
    labels : iterable
        One label per row: integers 1..K (or their text), or missing.
    names : sequence of str, optional
        The names of classes 1..K in order (a names file); without it, ``default`` names
        classes 1..len(default) and larger integers are named by their number.
    where : sequence of str
        Where each row is, for messages.
    default : sequence of str
        The default names (the reference system's seven groups).

    Returns
    -------
    (list, list of str)
        The name of each row's class (None when missing), and the declared class order.
    """
    values = []
    for i, label in enumerate(labels):
        if label is None or (isinstance(label, float) and math.isnan(label)) or str(label).strip() == "":
            values.append(None)
            continue
        number = float(str(label).strip())
        if number != round(number) or number < 1:
            raise AnnotationError(f"{where[i]}: class {str(label)!r} is not an integer 1..K")
        values.append(int(number))
    top = max((v for v in values if v is not None), default=0)
    if names is not None:
        order = list(names)
        if top > len(order):
            i = next(j for j, v in enumerate(values) if v is not None and v > len(order))
            raise AnnotationError(f"{where[i]}: class {values[i]} outside 1..{len(order)} (the names given)")
    elif top <= len(default):
        order = list(default)
    else:
        order = [str(k) for k in range(1, top + 1)]
    return [None if v is None else order[v - 1] for v in values], order

