"""Tadarida / Vigie-Chiro call labels: ``eti/<name>.eti`` joined with ``txt/<name>.ta``.

Facts of the format (Tadarida-C's reference sound database sample, ``RSDB_sample/``, and its
species list ``Sonotypes/SpeciesListComplete.csv``, repository YvesBas/Tadarida-C, GPL-3; the
folder ``../shared/data/real/tadarida_rsdb`` and its README):

- Each recording ``<name>.wav`` has, beside it, ``eti/<name>.eti`` (the labels) and
  ``txt/<name>.ta`` (the calls Tadarida-D's detector found), both tab-separated with a header.
- ``.eti`` (Latin-1 text; rows end with an extra tab): ``Cri`` (call number), ``Espece``
  (species code: 3 letters of the genus + 3 of the species, ``Pippip`` = Pipistrellus
  pipistrellus; or a code for an insect, bird, noise...), ``Type`` (``echolo``, ``social``,
  ``buzz``, ``mec`` = mechanical noise), ``Indice`` (the labeller's confidence), and site,
  author... columns. A row with an empty ``Espece`` is a call nobody labelled.
- ``.ta``: one row per detected call: ``CallNum`` (the ``Cri`` of the ``.eti``), ``StTime`` and
  ``Dur`` (ms), ``Fmin`` and ``Fmax`` (kHz), ``FileDur`` (s), ``SampleRate`` (Hz) and some 250
  acoustic measurements.
- The species list (``;``-separated, lines in Latin-1 or UTF-8): ``Esp`` (the code), ``Scientific
  name``, ``Group`` (``bat``, ``bird``, ``bush-cricket``, ``insect``, ``moth``, ``noise``,
  ``frog``, ``other-mammal``...). Insects, birds and noise are told apart from bats by their
  group; the ``Type`` of a non-bat row says nothing (bush-crickets are labelled ``social``).

**Checked against the audio** (``python benchmarks/annotation_units.py``, on ``tadarida_rsdb``:
25 SM2BAT+ recordings whose WAV headers say 38.4 kHz, time-expanded x10): the ``.ta`` is in
**real** time and real frequency. Its ``SampleRate`` is 384000 and its ``FileDur`` is the header's
duration divided by 10 (ratio 1.0000). Reading each WAV at 384 kHz, the energy in a bat call's
``Fmin..Fmax`` band during ``StTime..StTime + Dur`` (ms, real) is a median 2.08 times that band's
mean over the recording (710 echolocation elements); read as header time (``StTime`` / 10) it is
0.10 times (no call there). The spectral peak of the labelled samples falls at each species'
known frequency (kHz, real; median): Pipistrellus pipistrellus 47.7, P. pygmaeus 54.5,
P. kuhlii 37.6, Myotis nattereri 50.2, Miniopterus schreibersii 49.8, Barbastella barbastellus
34.0, Eptesicus serotinus 37.7, Plecotus auritus 26.0; inside ``Fmin..Fmax`` (+-1 kHz) for 77 %
of the P. pipistrellus calls. So ``time_expansion`` defaults to 1: Tadarida-D, run with the
recorder's expansion factor, writes real times; give the factor only for ``.ta`` files written
in header time (their ``SampleRate`` is the header's rate).

The labels are on the calls Tadarida's detector found: a faint call it missed has no label, so
"no label" is uncertain, not a sure negative. Unlabelled calls are rows of kind ``other``.

**A ``.ta`` row is a sound element, not a call.** Tadarida-D cuts each harmonic, fragment and
echo of a call into its own element, and the ``.eti`` labels each one. On ``tadarida_rsdb``,
262 of the 710 echolocation elements begin less than 5 ms after the end of (or inside) the
elements of the same species before them: a P. pipistrellus element at 42-78 kHz with another
at 92-105 kHz 1 ms later (its second harmonic), or two overlapping Myotis nattereri elements.
The silences before the others are far longer: 8 elements follow 5-20 ms of silence, 422 follow
20 ms or more (median 72 ms, between search calls). Counted as calls, the elements of one
call cannot all be found by a detector that reports one event per call (the every-peak recall of
the bundled model was 0.632 with elements, 0.942 with joined calls). So :func:`read_tadarida`
joins the echolocation elements of one species separated by less than ``element_gap``
(default :data:`ELEMENT_GAP`, 5 ms of silence, real time) into one call: its first start, its
last end, its lowest and highest frequency (so its ``end - position`` spans the echoes too:
it is not the call's duration). ``element_gap=0`` keeps Tadarida's elements.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.annotations.table import (
    AnnotationSet,
    empty_calls,
    event_name,
    parse_numbers,
    to_real_time,
    validate_calls,
)
from pipeline.annotations.tabular import read_delimited
from pipeline.io.annotations import AnnotationError

#: Where a species list is looked for, relative to the data folder and each of its parents.
SPECIES_LIST_NAMES = ("Sonotypes/SpeciesListComplete.csv", "SpeciesListComplete.csv", "Sonotypes/SpeciesList.csv",
                      "SpeciesList.csv")  # fmt: skip
#: How many parents of the data folder are searched for a species list.
SEARCH_PARENTS = 4

#: Kind of sound of each group of the species list (bats: from ``Type``).
GROUP_EVENTS = {
    "bat": None, "bird": "bird", "noise": "noise", "buzz": "buzz", "social": "social",
    "insect": "insect", "bush-cricket": "insect", "ground-cricket": "insect", "grasshopper": "insect",
    "cicada": "insect", "moth": "insect", "bee": "insect", "beetle": "insect", "fly": "insect",
    "frog": "other", "other-mammal": "other",
}  # fmt: skip

ETI_COLUMNS = ("Cri", "Espece", "Type")
TA_COLUMNS = ("CallNum", "StTime", "Dur", "Fmin", "Fmax")
#: Silence (s, real) below which echolocation elements of one species are one call (module notes).
ELEMENT_GAP = 0.005


def find_species_list(path: Path) -> Path | None:
    """The species list beside the data: ``Sonotypes/SpeciesListComplete.csv`` (or one of
    :data:`SPECIES_LIST_NAMES`) in ``path`` or one of its first :data:`SEARCH_PARENTS` parents."""
    folder = path if path.is_dir() else path.parent
    for candidate in [folder, *folder.parents][: SEARCH_PARENTS + 1]:
        for name in SPECIES_LIST_NAMES:
            if (candidate / name).is_file():
                return candidate / name
    return None


def read_species_list(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Species code -> (scientific name, group) from a Tadarida species list.

    The name is the code itself where the list gives none (``buzz``, ``social``...).

    Raises
    ------
    AnnotationError
        If the file is missing or lacks the ``Esp`` column.
    """
    table = read_delimited(path, delimiter=";", per_line=True)
    table.require("Esp")
    out = {}
    for row in table.rows:
        code = row["Esp"]
        if code and code not in out:
            out[code] = (row.get("Scientific name", "") or code, row.get("Group", "").lower())
    return out


def _label(code: str, kind_text: str, species: dict | None) -> tuple[str | None, str, bool]:
    """(class, event, known) of one ``.eti`` row."""
    if not code:
        return None, "other", True
    kind = event_name(kind_text) if kind_text else "echolocation"
    if species is None or code not in species:
        return code, kind or "other", species is None
    name, group = species[code]
    group_event = GROUP_EVENTS.get(group, event_name(group) or "other")
    return name, (kind or "other") if group_event is None else group_event, True


def join_elements(calls: pd.DataFrame, gap: float = ELEMENT_GAP) -> pd.DataFrame:
    """Join the echolocation elements of one call (harmonics, fragments, echoes) into one row.

    Parameters
    ----------
    calls : pandas.DataFrame
        A valid call table (:func:`~pipeline.annotations.table.validate_calls`), real time.
    gap : float
        Silence (s): an echolocation element of a species that begins less than ``gap`` after the
        latest end of the call so far (or inside it) in the same recording belongs to that call.
        0 or less: the table as it is.

    Returns
    -------
    pandas.DataFrame
        The table with each joined call as one row in place of its first element: ``position``
        its first start, ``end`` its last end, ``low_freq`` / ``high_freq`` the lowest and highest
        of its elements; other rows (other kinds of sound, unlabelled elements) unchanged.
    """
    calls = calls.reset_index(drop=True)
    if gap <= 0 or calls.empty:
        return calls
    bats = calls[(calls["event"] == "echolocation") & calls["class"].notna()].sort_values("position", kind="stable")
    key = np.arange(len(calls))  # each row's call: the row of its first element in time
    for _, elements in bats.groupby(["file", "class"], sort=False):
        end = elements["end"].fillna(elements["position"]).cummax().shift().to_numpy()
        starts_call = ~(elements["position"].to_numpy() - end < gap)  # True for the first element (NaN)
        first = elements.index.to_numpy()[np.maximum.accumulate(np.where(starts_call, np.arange(len(elements)), 0))]
        key[elements.index.to_numpy()] = first
    if (key == np.arange(len(calls))).all():
        return calls
    grouped = calls.groupby(key, sort=True)
    firsts = grouped.nth(0)  # the rows in table order; set on the call's key (its first element in time)
    out = firsts.set_axis(key[firsts.index.to_numpy()])
    out["position"] = grouped["position"].min()
    known_end = grouped["end"].count() > 0  # an element without an end ends where it starts
    out["end"] = calls["end"].fillna(calls["position"]).groupby(key).max().where(known_end)
    out["low_freq"] = grouped["low_freq"].min()
    out["high_freq"] = grouped["high_freq"].max()
    return out[calls.columns].sort_index().reset_index(drop=True)


def _recording_calls(eti: Path, ta: Path, name: str, species: dict | None, strict: bool,
                     species_path: Path | None, unknown: dict[str, int]) -> tuple[pd.DataFrame, list[str], float]:
    labels = read_delimited(eti)
    labels.require(*ETI_COLUMNS)
    detections = read_delimited(ta)
    detections.require(*TA_COLUMNS)
    lwhere = [labels.where(i) for i in range(len(labels.rows))]
    dwhere = [detections.where(i) for i in range(len(detections.rows))]
    numbers = {column: parse_numbers(detections.column(column), column=column, where=dwhere) for column in TA_COLUMNS}
    duration = math.nan
    if "FileDur" in detections.header and detections.rows:
        duration = float(parse_numbers(detections.column("FileDur")[:1], column="FileDur", where=dwhere)[0])
    index: dict[int, int] = {}
    for i, number in enumerate(numbers["CallNum"]):
        if number != round(number) or int(number) in index:
            raise AnnotationError(f"{dwhere[i]}: CallNum {float(number):g} is not a distinct call number")
        index[int(number)] = i
    calls_of = parse_numbers(labels.column("Cri"), column="Cri", where=lwhere)
    rows, where, labelled = [], [], set()
    for i, (call, row) in enumerate(zip(calls_of, labels.rows)):
        if call != round(call) or int(call) not in index:
            raise AnnotationError(f"{lwhere[i]}: call {row['Cri']!r} is not in {ta.name}")
        code = row["Espece"]
        label, kind, known = _label(code, row["Type"], species)
        if not known:
            if strict:
                raise AnnotationError(f"{lwhere[i]}: species code {code!r} is not in {species_path}")
            unknown[code] = unknown.get(code, 0) + 1
        labelled.add(int(call))
        rows.append((index[int(call)], label, kind))
        where.append(lwhere[i])
    for number, j in index.items():  # detected calls that the .eti does not list: not labelled
        if number not in labelled:
            rows.append((j, None, "other"))
            where.append(dwhere[j])
    order = sorted(range(len(rows)), key=lambda k: (numbers["CallNum"][rows[k][0]], k))
    rows, where = [rows[k] for k in order], [where[k] for k in order]
    j = np.array([r[0] for r in rows], dtype=np.int64)
    start = numbers["StTime"][j] / 1000.0 if len(j) else np.array([])
    calls = pd.DataFrame(
        {
            "file": [name] * len(rows),
            "position": start,
            "end": start + (numbers["Dur"][j] / 1000.0 if len(j) else 0.0),
            "low_freq": numbers["Fmin"][j] * 1000.0 if len(j) else [],
            "high_freq": numbers["Fmax"][j] * 1000.0 if len(j) else [],
            "class": pd.Series([r[1] for r in rows], dtype=object),
            "event": [r[2] for r in rows],
            "duration": duration,
        }
    )
    return calls, where, duration


def read_tadarida(
    path: str | os.PathLike,
    *,
    time_expansion: float = 1.0,
    species_list: str | os.PathLike | None = None,
    strict: bool = False,
    element_gap: float = ELEMENT_GAP,
) -> AnnotationSet:
    """Read Tadarida / Vigie-Chiro labels (``eti/*.eti`` with their ``txt/*.ta``).

    Parameters
    ----------
    path : str or os.PathLike
        A folder, searched recursively for ``eti/<name>.eti`` files (each with its
        ``txt/<name>.ta`` beside the ``eti`` folder), or one ``.eti`` file.
    time_expansion : float
        Factor by which the ``.ta`` times are slowed down; 1 (default): real, as Tadarida-D
        writes them when run with the recorder's factor (checked on ``tadarida_rsdb``, see the
        module's notes).
    species_list : str or os.PathLike, optional
        Tadarida's ``SpeciesListComplete.csv`` (codes -> scientific names and groups). Default:
        found beside the data (:func:`find_species_list`). Without one, codes are kept as
        classes and the kind of sound comes from ``Type`` only (a line in ``skipped`` says so).
    strict : bool
        If True, a code that the species list lacks is an error; if False (default) it is kept
        as the class and listed in ``skipped``.
    element_gap : float
        Echolocation elements of one species in one recording separated by less than this
        silence (s, real time) are one call (:func:`join_elements`); default 5 ms; 0 keeps one
        row per element.

    Returns
    -------
    AnnotationSet
        ``source="tadarida"``; one row per ``.eti`` row (class = scientific name, kind of sound
        from the species' group, and for bats from ``Type``), the echolocation elements of one
        call joined, plus one ``other`` row per detected call without a label; ``windows`` the
        whole recordings (0 to ``FileDur``), those without any label included; ``classes`` None.

    Raises
    ------
    AnnotationError
        One line naming the file, the line and the reason: a missing column, a time that is not
        a number, a call number the ``.ta`` lacks, an unknown code (when ``strict``); a negative
        ``element_gap``.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".eti":
        labels, root = [path], path.parent.parent
    elif path.is_dir():
        labels, root = sorted(p for p in path.rglob("*.eti") if p.parent.name.lower() == "eti"), path
        if not labels:
            raise AnnotationError(f"{path}: no Tadarida labels (eti/<name>.eti) in this folder")
    else:
        raise AnnotationError(f"{path}: not found, or not a folder or an .eti file")
    if not (math.isfinite(element_gap) and element_gap >= 0):
        raise AnnotationError(f"{path}: element_gap={element_gap} must be a number of seconds >= 0")
    species_path = Path(species_list) if species_list is not None else find_species_list(path)
    species = read_species_list(species_path) if species_path is not None else None
    skipped = []
    if species is None:
        if strict:
            raise AnnotationError(f"{path}: no species list found (Sonotypes/SpeciesListComplete.csv); give one")
        skipped.append(
            f"{path}: no species list found (Sonotypes/SpeciesListComplete.csv): species codes kept as classes, "
            "insects, birds and noise told apart from bats by the Type column only"
        )
    parts, where, windows, unknown = [], [], [], {}
    for eti in labels:
        ta = eti.parent.parent / "txt" / f"{eti.stem}.ta"
        name = str(PurePosixPath(*eti.parent.parent.relative_to(root).parts, eti.stem))
        if not ta.is_file():
            skipped.append(f"{eti}: no {ta.relative_to(eti.parent.parent)} beside it: its labels have no times, left out")
            continue
        calls, rows, duration = _recording_calls(eti, ta, name, species, strict, species_path, unknown)
        parts.append(calls)
        where += rows
        if math.isfinite(duration):
            windows.append({"file": name, "start": 0.0, "end": duration})
    if unknown:
        listed = ", ".join(f"{code} ({n})" for code, n in sorted(unknown.items()))
        skipped.append(f"{path}: species code(s) not in {species_path}, kept as written: {listed}")
    calls = pd.concat(parts, ignore_index=True) if parts else empty_calls()
    calls = validate_calls(to_real_time(calls, time_expansion), where=where, origin=str(path))
    calls = join_elements(calls, element_gap)
    window_table = to_real_time(pd.DataFrame(windows, columns=["file", "start", "end"]), time_expansion) if windows else None
    return AnnotationSet(calls=calls, windows=window_table, classes=None, source="tadarida", skipped=skipped)
