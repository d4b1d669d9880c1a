"""The canonical table of annotated calls: its checks, the choice of calls to learn, names files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.annotations import AnnotationError, AnnotationSet, read_class_names, select_calls
from pipeline.annotations.table import CALL_COLUMNS, EVENTS, class_and_event, event_name, to_real_time, validate_calls


def _calls(**columns) -> pd.DataFrame:
    base = {"file": ["a", "a", "b"], "position": [0.1, 0.1, 0.5]}
    base.update(columns)
    return pd.DataFrame(base)


def test_validate_calls_gives_the_canonical_columns_dtypes_and_defaults():
    table = validate_calls(_calls(**{"class": ["Myotis daubentonii", None, "Pipistrellus kuhlii"], "extra": [1, 2, 3]}))
    assert list(table.columns) == list(CALL_COLUMNS)
    assert str(table["file"].dtype) == "str" and table["position"].dtype == np.float64
    assert list(table["event"]) == ["echolocation"] * 3
    assert table["end"].isna().all() and table["split"].isna().all() and table["duration"].isna().all()
    assert table["class"].isna().tolist() == [False, True, False]
    # two rows at one position stay two rows
    assert (table["position"] == 0.1).sum() == 2


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"position": [0.1, -0.5, 0.2]}, "call 2: start time -0.5 s is negative"),
        ({"position": [0.1, np.inf, 0.2]}, "call 2: start time inf is not a finite number"),
        ({"end": [0.2, 0.05, 0.6]}, "call 2: end time 0.05 s is before the start time 0.1 s"),
        ({"low_freq": [1e3, 5e4, 1e3], "high_freq": [2e3, 4e4, 2e3]}, "call 2: low frequency 50000.0 Hz is above"),
        ({"low_freq": [-1.0, 1.0, 1.0]}, "call 1: negative frequency"),
        ({"event": ["echolocation", "singing", "noise"]}, "call 2: unknown kind of sound 'singing'"),
        ({"split": ["train", "validation", "test"]}, "call 2: unknown split 'validation'"),
        ({"file": ["a", "", "b"]}, "call 2: the recording's name is empty"),
        ({"duration": [1.0, -1.0, 1.0]}, "call 2: recording duration -1.0 s is negative"),
        ({"position": [0.1, "soon", 0.2]}, "call 2: position 'soon' is not a number"),
    ],
)
def test_validate_calls_names_the_row_and_the_reason(change, reason):
    with pytest.raises(AnnotationError) as info:
        validate_calls(_calls(**change), origin="my.csv")
    message = str(info.value)
    assert message.startswith("my.csv: ") and reason in message and "\n" not in message


def test_validate_calls_uses_the_sources_locators():
    with pytest.raises(AnnotationError, match=r"^t\.txt, line 9: start time -1\.0 s is negative$"):
        validate_calls(_calls(position=[0.0, 1.0, -1.0]), where=["t.txt, line 4", "t.txt, line 6", "t.txt, line 9"])
    with pytest.raises(AnnotationError, match="missing column.*position"):
        validate_calls(pd.DataFrame({"file": ["a"]}), origin="x")


def test_event_words_and_class_labels():
    assert event_name("Echolocation") == "echolocation" and event_name("echolo") == "echolocation"
    assert event_name("Feeding buzz") == "buzz" and event_name("mec") == "noise"
    assert event_name("bush-cricket") == "insect" and event_name("Unknown") == "other"
    assert event_name("singing") is None
    assert class_and_event("Bat") == (None, "echolocation")
    assert class_and_event("unknown") == (None, "echolocation")
    assert class_and_event("Noise") == (None, "noise")
    assert class_and_event("Social") == (None, "social")
    assert class_and_event("Noise", "insect") == (None, "insect")
    assert class_and_event("Pipistrellus nathusii", "buzz") == ("Pipistrellus nathusii", "buzz")
    assert class_and_event("  Murciélago rabudo ") == ("  Murciélago rabudo ", "echolocation")  # kept as written


def test_time_expansion_divides_times_and_multiplies_frequencies():
    calls = _calls(end=[0.2, 0.3, 0.6], low_freq=[3000.0, 2000.0, 4000.0], high_freq=[5000.0, 6000.0, 7000.0],
                   duration=[10.0, 10.0, 5.0])  # fmt: skip
    real = to_real_time(calls, 10)
    np.testing.assert_allclose(real["position"], [0.01, 0.01, 0.05])
    np.testing.assert_allclose(real["end"], [0.02, 0.03, 0.06])
    np.testing.assert_allclose(real["low_freq"], [30000, 20000, 40000])
    np.testing.assert_allclose(real["duration"], [1.0, 1.0, 0.5])
    np.testing.assert_allclose(calls["position"], [0.1, 0.1, 0.5])  # the input is left as it was
    for bad in (0, -2, "ten", float("nan")):
        with pytest.raises(AnnotationError, match="time expansion"):
            to_real_time(calls, bad)


def _set() -> AnnotationSet:
    events = ["echolocation", "echolocation", "buzz", "social", "insect", "noise", "bird", "other", "echolocation"]
    classes = ["Pip pip", "Pip pip", "Pip pip", "Nyc noc", "Tettigonia viridissima", None, "Turdus merula", None, None]
    calls = pd.DataFrame({"file": ["r"] * 9, "position": np.arange(9) * 0.1, "event": events, "class": classes})
    calls.loc[1, "position"] = 0.0  # two species... here one species twice at one moment: two rows
    return AnnotationSet(calls=calls, windows=None, classes=None, source="test")


def test_select_calls_never_learns_a_non_echolocation_sound_as_a_bat():
    annotated = _set()
    negative = select_calls(annotated)  # default: buzz and social are negatives
    roles = dict(zip(negative["event"], negative["role"]))
    assert roles == {"echolocation": "positive", "buzz": "negative", "social": "negative", "insect": "negative",
                     "noise": "negative", "bird": "negative"}  # fmt: skip
    assert "other" not in set(negative["event"])
    assert (negative["position"] == 0.0).sum() == 2  # two rows at one position stay two rows
    positives = negative[negative["role"] == "positive"]
    assert positives["class"].isna().tolist() == [False, False, True]  # detection-only keeps a missing class

    as_class = select_calls(annotated, non_echolocation="class")
    bat_other = as_class[as_class["event"].isin(["buzz", "social"])]
    assert set(bat_other["role"]) == {"positive"} and list(bat_other["class"]) == ["buzz", "social"]
    assert set(as_class.loc[as_class["event"].isin(["insect", "noise", "bird"]), "role"]) == {"negative"}

    dropped = select_calls(annotated, non_echolocation="drop")
    assert not dropped["event"].isin(["buzz", "social", "other"]).any()
    assert set(dropped.loc[dropped["event"] == "insect", "role"]) == {"negative"}
    with pytest.raises(ValueError, match="non_echolocation"):
        select_calls(annotated, non_echolocation="bat")


def test_every_event_is_either_learned_or_left_out_by_select_calls():
    calls = pd.DataFrame({"file": ["r"] * len(EVENTS), "position": np.arange(len(EVENTS), dtype=float), "event": EVENTS})
    chosen = select_calls(AnnotationSet(calls=calls, windows=None, classes=None, source="t"))
    assert set(chosen["event"]) == set(EVENTS) - {"other"}


def test_annotation_set_checks_windows_and_classes():
    calls = _calls()
    windows = pd.DataFrame({"file": ["a"], "start": [1.0], "end": [0.5]})
    with pytest.raises(AnnotationError, match="annotated window 1 .*end is before the start"):
        AnnotationSet(calls=calls, windows=windows, classes=None, source="x")
    with pytest.raises(AnnotationError, match="names a class twice"):
        AnnotationSet(calls=calls, windows=None, classes=["a", "a"], source="x")


def test_class_names_file_keeps_spaces_inside_and_non_ascii(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes("\ufeffNoctilio leporinus\r\nMolossus molossus\n\n  Pteronotus mesoamericanus \nMurciélago rabudo\n".encode())
    assert read_class_names(path) == ["Noctilio leporinus", "Molossus molossus", "Pteronotus mesoamericanus", "Murciélago rabudo"]
    path.write_text("a\nb\na\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"names\.txt, line 3: class 'a' is already named on line 1"):
        read_class_names(path)
    path.write_bytes("Murci\xe9lago\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match="not UTF-8"):
        read_class_names(path)
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="no class name"):
        read_class_names(path)
