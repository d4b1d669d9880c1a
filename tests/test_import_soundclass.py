"""soundClass's SQLite labels: the real demo database and its recordings, and broken databases."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
import scipy.signal
import soundfile

from pipeline.annotations import AnnotationError, read_soundclass


@pytest.fixture(scope="module")
def demo(real_data):
    return real_data / "soundclass"


def test_the_99_bbar_and_74_mesc_labels(demo):
    everything = read_soundclass(demo / "demo_db.sqlite3", time_expansion=10, sample_rate=44100)
    assert everything.calls.groupby("class").size().to_dict() == {"Bbar": 99, "Mesc": 74}
    assert everything.skipped == [] and everything.source == "soundclass"
    # From the audio: Mesc001's recording is not in the demo, so its 23 labels cannot be placed.
    found = read_soundclass(demo / "demo_db.sqlite3", time_expansion=10)
    assert found.calls.groupby("class").size().to_dict() == {"Bbar": 99, "Mesc": 74 - 23}
    assert len(found.skipped) == 1 and "23 label(s) of Mesc001" in found.skipped[0]
    calls = found.calls
    assert (calls["position"] < calls["duration"]).all() and calls["end"].isna().all()
    assert calls["duration"].between(0.3, 1.8).all()  # 0.3-1.4 s of real audio, says the README (x10)
    assert set(calls["event"]) == {"echolocation"}


def test_label_positions_are_sample_indices_at_the_calls(demo):
    """At the labelled sample (header rate x 10 = real rate) the signal above 15 kHz is loud;
    at times 1.3 times later (a wrong unit) it mostly is not."""
    calls = read_soundclass(demo / "demo_db.sqlite3", time_expansion=10).calls
    at_label, elsewhere = [], []
    for name, group in calls.groupby("file"):
        samples, header_rate = soundfile.read(str(demo / f"{name}.wav"))
        rate = header_rate * 10
        sos = scipy.signal.butter(4, 15_000, "highpass", fs=rate, output="sos")
        envelope = np.convolve(np.abs(scipy.signal.sosfiltfilt(sos, samples.mean(axis=1))), np.ones(64) / 64, "same")
        quiet = np.median(envelope)
        for position in group["position"]:
            for times, store in ((position, at_label), (position * 1.3, elsewhere)):
                i = int(round(times * rate)) % len(envelope)
                store.append(envelope[max(0, i - 441): i + 441].max() / quiet)  # within 1 ms
    assert np.mean(np.array(at_label) > 3) > 0.6
    assert np.mean(np.array(elsewhere) > 3) < 0.3


def test_time_expansion_auto_and_sample_rate(demo, tmp_path):
    auto = read_soundclass(demo / "demo_db.sqlite3", time_expansion="auto")  # 44.1 kHz header: x10
    ten = read_soundclass(demo / "demo_db.sqlite3", time_expansion=10)
    np.testing.assert_array_equal(auto.calls["position"], ten.calls["position"])
    one = read_soundclass(demo / "demo_db.sqlite3")
    np.testing.assert_allclose(one.calls["position"], ten.calls["position"] * 10)
    # The audio elsewhere: found through audio=, else every label is listed as left out.
    shutil.copy(demo / "demo_db.sqlite3", tmp_path / "labels.sqlite3")
    alone = read_soundclass(tmp_path / "labels.sqlite3", time_expansion=10)
    assert len(alone.calls) == 0 and len(alone.skipped) == 15
    moved = read_soundclass(tmp_path / "labels.sqlite3", time_expansion=10, audio=demo)
    assert len(moved.calls) == 150


def _database(path, rows, table="labels", columns=("recording", "label_position", "label_class")):
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
        db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})", rows)
    return path


def test_noise_samples_and_any_class_names(tmp_path):
    path = _database(tmp_path / "db.sqlite3", [("a", 44100, "Pipistrellus kuhlii"), ("a", 88200, "0"),
                                               ("b", 1000, "Molosse de Cestoni")])  # fmt: skip
    calls = read_soundclass(path, sample_rate=441000).calls
    assert calls["event"].tolist() == ["echolocation", "noise", "echolocation"]
    assert calls["class"].fillna("-").tolist() == ["Pipistrellus kuhlii", "-", "Molosse de Cestoni"]
    np.testing.assert_allclose(calls["position"], [0.1, 0.2, 1000 / 441000])


def test_malformed_databases_are_one_line(tmp_path):
    text = tmp_path / "notes.sqlite3"
    text.write_text("recording,label_position\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"notes\.sqlite3: not a SQLite database$"):
        read_soundclass(text)
    other = _database(tmp_path / "other.sqlite3", [("a", 1, "x")], table="annotations")
    with pytest.raises(AnnotationError, match=r"other\.sqlite3: no table 'labels' \(tables: annotations\)"):
        read_soundclass(other)
    partial = _database(tmp_path / "partial.sqlite3", [("a", 1)], columns=("recording", "label_position"))
    with pytest.raises(AnnotationError, match=r"partial\.sqlite3: table 'labels' lacks column\(s\) label_class"):
        read_soundclass(partial)
    bad = _database(tmp_path / "bad.sqlite3", [("a", 10, "x"), ("a", "middle", "x")])
    with pytest.raises(AnnotationError, match=r"bad\.sqlite3: labels row 2: label_position 'middle' is not a number"):
        read_soundclass(bad, sample_rate=44100)
    negative = _database(tmp_path / "negative.sqlite3", [("a", -5, "x")])
    with pytest.raises(AnnotationError, match=r"labels row 1: label_position -5 is not a sample index"):
        read_soundclass(negative, sample_rate=44100)
