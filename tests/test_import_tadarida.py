"""Tadarida / Vigie-Chiro labels: the real sample of Tadarida's sound database, and broken copies."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.signal
import soundfile

from pipeline.annotations import AnnotationError, read_tadarida, select_calls
from pipeline.annotations.table import validate_calls
from pipeline.annotations.tadarida import ELEMENT_GAP, join_elements

#: Echolocation elements per species in ../shared/data/README.md (tadarida_rsdb).
README_BATS = {
    "Pipistrellus pipistrellus": 433, "Plecotus auritus": 79, "Myotis nattereri": 77, "Eptesicus serotinus": 45,
    "Pipistrellus kuhlii": 28, "Pipistrellus pygmaeus": 25, "Miniopterus schreibersii": 12,
    "Barbastella barbastellus": 11,
}  # fmt: skip
#: Insects (by code in the README), mechanical noise and birds.
README_OTHERS = {"Insect sp.6": 211, "Platycleis intermedia": 139, "Tettigonia viridissima": 20,
                 "Leptophyes punctatissima": 9}  # fmt: skip


@pytest.fixture(scope="module")
def rsdb(real_data):
    return real_data / "tadarida_rsdb"


def test_elements_per_species_match_the_readme(rsdb):
    annotated = read_tadarida(rsdb, element_gap=0)
    calls = annotated.calls
    assert annotated.source == "tadarida" and annotated.skipped == []
    bats = calls[calls["event"] == "echolocation"].groupby("class").size().to_dict()
    assert bats == README_BATS
    buzz = calls[calls["event"] == "buzz"]
    assert len(buzz) == 13 and set(buzz["class"]) == {"Pipistrellus pipistrellus"}
    insects = calls[calls["event"] == "insect"].groupby("class").size().to_dict()
    assert insects == README_OTHERS  # Tadarida labels bush-crickets 'social': the group says insect
    assert (calls["event"] == "noise").sum() == 47 and (calls["event"] == "bird").sum() == 3
    assert calls.loc[calls["event"] == "other", "class"].isna().all()  # detected, never labelled
    assert len(annotated.windows) == 25 and set(annotated.windows["file"]) == set(calls["file"])
    assert all(name.startswith("RSDB_sample/20160822/Car") for name in calls["file"])
    # insects, birds and noise are negatives; nothing but the 8 species is ever a positive
    chosen = select_calls(annotated)
    assert set(chosen.loc[chosen["role"] == "positive", "class"]) == set(README_BATS)


def _calls(rows):
    columns = ["file", "position", "end", "low_freq", "high_freq", "class", "event"]
    return validate_calls(pd.DataFrame(rows, columns=columns))


def test_elements_of_one_call_are_joined():
    """Harmonics and echoes of one call become one row; the next call, other species, other kinds
    of sound and unlabelled elements stay as they are."""
    calls = _calls([  # file, position, end, low, high, class, event
        ("a", 0.100, 0.105, 42e3, 78e3, "Pip", "echolocation"),
        ("a", 0.101, 0.104, 92e3, 105e3, "Pip", "echolocation"),  # second harmonic, 1 ms later
        ("a", 0.108, 0.110, 45e3, 60e3, "Pip", "echolocation"),  # echo after 3 ms of silence
        ("a", 0.102, 0.106, 30e3, 40e3, "Ept", "echolocation"),  # another bat at the same moment
        ("a", 0.103, 0.104, 20e3, 30e3, "Cricket", "insect"),
        ("a", 0.104, 0.105, np.nan, np.nan, None, "other"),  # unlabelled element
        ("a", 0.104, 0.105, 40e3, 50e3, None, "echolocation"),  # a bat of unknown species: never joined
        ("a", 0.170, 0.175, 43e3, 80e3, "Pip", "echolocation"),  # the next call
        ("b", 0.106, 0.110, 43e3, 80e3, "Pip", "echolocation"),  # another recording
    ])  # fmt: skip
    joined = join_elements(calls, ELEMENT_GAP)
    assert (joined.dtypes == calls.dtypes).all()
    pip = joined[(joined["class"] == "Pip") & (joined["file"] == "a")]
    assert pip[["position", "end", "low_freq", "high_freq"]].values.tolist() == [[0.1, 0.11, 42e3, 105e3],
                                                                                [0.17, 0.175, 43e3, 80e3]]
    assert len(joined) == len(calls) - 2 and pip.index.tolist() == [0, 5]  # each call where its first element was
    assert joined.drop(index=pip.index).equals(calls.drop(index=[0, 1, 2, 7]).reset_index(drop=True).set_axis(
        joined.drop(index=pip.index).index))  # fmt: skip
    assert len(join_elements(calls, 0.002)) == len(calls) - 1  # the echo is a call of its own
    assert join_elements(calls, 0).equals(calls)
    # the same rows in another order and with another index: the same calls
    shuffled = calls.iloc[::-1].set_axis([5] * len(calls))
    def in_order(table):
        return table.sort_values(["file", "position", "event"]).reset_index(drop=True)

    assert in_order(join_elements(shuffled, ELEMENT_GAP)).equals(in_order(joined))


def test_silence_is_counted_from_the_call_s_latest_end():
    calls = _calls([
        ("a", 0.100, 0.120, 40e3, 50e3, "Myo", "echolocation"),  # a long element
        ("a", 0.101, 0.102, 60e3, 70e3, "Myo", "echolocation"),  # a short one inside it
        ("a", 0.105, 0.106, 60e3, 70e3, "Myo", "echolocation"),  # 3 ms after the short one, still inside
        ("a", 0.123, np.nan, 40e3, 45e3, "Myo", "echolocation"),  # 3 ms after the long one, no end
        ("a", 0.124, 0.126, 40e3, 45e3, "Myo", "echolocation"),  # 1 ms after the one without an end
    ])  # fmt: skip
    assert join_elements(calls, 0.002)[["position", "end"]].values.tolist() == [[0.1, 0.12], [0.123, 0.126]]
    assert join_elements(calls, ELEMENT_GAP)[["position", "end"]].values.tolist() == [[0.1, 0.126]]
    alone = join_elements(calls.iloc[[3]], ELEMENT_GAP)
    assert np.isnan(alone["end"].iloc[0])  # a call whose every element lacks its end has none


def test_a_negative_element_gap_is_refused(rsdb):
    with pytest.raises(AnnotationError, match=r"element_gap=-0.001 must be a number of seconds >= 0"):
        read_tadarida(rsdb, element_gap=-0.001)


def test_the_real_sample_s_calls_cover_their_elements(rsdb):
    calls, elements = read_tadarida(rsdb).calls, read_tadarida(rsdb, element_gap=0).calls
    bats = calls[calls["event"] == "echolocation"]
    assert len(bats) == 448 and (bats["class"] == "Pipistrellus pipistrellus").sum() == 274  # as the README says
    assert (calls["event"] != "echolocation").sum() == (elements["event"] != "echolocation").sum()
    assert len(bats) < (elements["event"] == "echolocation").sum()
    for (name, species), group in elements[elements["event"] == "echolocation"].groupby(["file", "class"]):
        joined = bats[(bats["file"] == name) & (bats["class"] == species)].sort_values("position")
        silences = joined["position"].to_numpy()[1:] - joined["end"].cummax().to_numpy()[:-1]
        assert (silences >= ELEMENT_GAP).all()  # no two calls of a species closer than the gap
        for element in group.itertuples():  # each element inside exactly one call, in time and frequency
            in_time = (joined["position"] <= element.position) & (joined["end"] >= element.end)
            in_band = (joined["low_freq"] <= element.low_freq) & (joined["high_freq"] >= element.high_freq)
            inside = joined[in_time & in_band]
            assert len(inside) == 1


def test_times_and_frequencies_are_real(rsdb):
    """The labels lie inside their recordings' real duration, and the energy of the audio read at
    the real rate is in each bat call's band at its time (not at the header-time reading)."""
    calls = read_tadarida(rsdb).calls
    folder = rsdb / "RSDB_sample" / "20160822"
    at_label, at_header_time = [], []
    for name, group in calls.groupby("file"):
        samples, header_rate = soundfile.read(str(folder / f"{name.rsplit('/', 1)[1]}.wav"))
        real_duration = len(samples) / (header_rate * 10)  # x10 time expansion, no GUANO
        assert group["duration"].iloc[0] == pytest.approx(real_duration, abs=0.01)
        assert (group["end"] <= real_duration + 0.01).all()
        freqs, times, power = scipy.signal.spectrogram(samples, fs=header_rate * 10, nperseg=512, noverlap=384)
        for call in group[group["event"] == "echolocation"].to_dict("records"):
            band = (freqs >= call["low_freq"]) & (freqs <= call["high_freq"])
            mean = power[band].mean()
            for start, end, store in ((call["position"], call["end"], at_label),
                                      (call["position"] / 10, call["end"] / 10, at_header_time)):  # fmt: skip
                during = (times >= start) & (times <= end)
                if during.any():
                    store.append(power[band][:, during].mean() / mean)
    assert np.median(at_label) > 1.5 and np.median(at_header_time) < 0.5
    bats = calls[calls["event"] == "echolocation"]
    assert bats["high_freq"].median() > 40_000 and bats["low_freq"].min() >= 8_000  # kHz -> Hz, real
    pip = bats[bats["class"] == "Pipistrellus pipistrellus"]
    assert 40_000 < ((pip["low_freq"] + pip["high_freq"]) / 2).median() < 60_000


def test_time_expansion_single_file_and_species_list(rsdb, tmp_path):
    folder = rsdb / "RSDB_sample" / "20160822"
    eti = sorted((folder / "eti").glob("*.eti"))[0]
    one = read_tadarida(eti, element_gap=0)
    assert one.calls["file"].nunique() == 1 and one.calls["file"].iloc[0] == eti.stem
    slow = read_tadarida(eti, time_expansion=10, element_gap=0)
    np.testing.assert_allclose(slow.calls["position"], one.calls["position"] / 10)
    np.testing.assert_allclose(slow.calls["high_freq"], one.calls["high_freq"] * 10)
    # Copied away from its species list: codes kept, and said so.
    copy = tmp_path / "night"
    shutil.copytree(folder / "eti", copy / "eti")
    shutil.copytree(folder / "txt", copy / "txt")
    alone = read_tadarida(copy)
    assert "Pippip" in set(alone.calls["class"]) and any("no species list" in line for line in alone.skipped)
    with pytest.raises(AnnotationError, match="no species list found"):
        read_tadarida(copy, strict=True)
    given = read_tadarida(copy, species_list=rsdb / "Sonotypes" / "SpeciesListComplete.csv")
    assert "Pipistrellus pipistrellus" in set(given.calls["class"])


def _copy(rsdb, tmp_path):
    folder = rsdb / "RSDB_sample" / "20160822"
    eti = sorted((folder / "eti").glob("*.eti"))[0]
    night = tmp_path / "Sonotypes"
    night.mkdir()
    shutil.copy(rsdb / "Sonotypes" / "SpeciesListComplete.csv", night)
    for kind, suffix in (("eti", ".eti"), ("txt", ".ta")):
        (tmp_path / kind).mkdir()
        shutil.copy(folder / kind / f"{eti.stem}{suffix}", tmp_path / kind)
    return tmp_path / "eti" / f"{eti.stem}.eti", tmp_path / "txt" / f"{eti.stem}.ta"


def _edit(path, line_number, old, new, encoding="latin-1"):
    lines = path.read_bytes().decode(encoding).split("\n")
    assert old in lines[line_number - 1]
    lines[line_number - 1] = lines[line_number - 1].replace(old, new, 1)
    path.write_bytes("\n".join(lines).encode(encoding))


def test_malformed_labels_are_one_line_naming_file_line_and_reason(rsdb, tmp_path):
    eti, ta = _copy(rsdb, tmp_path)
    _edit(ta, 3, "\t93.33\t", "\t9x.33\t")  # StTime of call 1
    with pytest.raises(AnnotationError, match=rf"^{ta}, line 3: StTime '9x.33' is not a number$"):
        read_tadarida(tmp_path)
    _edit(ta, 3, "\t9x.33\t", "\t93.33\t")
    _edit(eti, 2, "Eptser", "Xyzabc")
    assert any("Xyzabc (1)" in line for line in read_tadarida(tmp_path).skipped)
    with pytest.raises(AnnotationError, match=rf"^{eti}, line 2: species code 'Xyzabc' is not in .*SpeciesListComplete\.csv$"):
        read_tadarida(tmp_path, strict=True)
    _edit(eti, 2, "Xyzabc", "Eptser")
    _edit(eti, 5, "3\tEptser", "999\tEptser")
    with pytest.raises(AnnotationError, match=rf"^{eti}, line 5: call '999' is not in {ta.name}$"):
        read_tadarida(tmp_path)
    _edit(eti, 1, "Espece", "Species")
    with pytest.raises(AnnotationError, match=rf"^{eti}: missing column\(s\) 'Espece'"):
        read_tadarida(tmp_path)
    ta.unlink()
    eti.write_text("Cri\tEspece\tType\n", encoding="latin-1")
    assert any("no txt/" in line for line in read_tadarida(tmp_path).skipped)
