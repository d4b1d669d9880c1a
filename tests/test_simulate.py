"""Tests of pipeline.simulation: archive layout, annotations, reproducibility and call physics."""

import hashlib
from collections import Counter
from datetime import datetime
from pathlib import Path

import guano
import numpy as np
import pandas as pd
import pytest
import scipy.fft
import soundfile

from pipeline.config import REFERENCE_GROUPS
from pipeline.io.annotations import read_reference_npz
from pipeline.simulation import (
    SPECIES_MODELS,
    draw_calls,
    draw_pass,
    eligible_species,
    simulate_archive,
    simulate_recording,
    synthesize_call,
)

RATES = (250_000, 256_000, 384_000, 500_000)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Half a minute with some time-expanded files (defaults otherwise)."""
    return simulate_archive(tmp_path_factory.mktemp("sim"), minutes=0.5, seed=11, time_expanded_fraction=0.3)


@pytest.fixture(scope="module")
def calls_table(archive):
    return pd.read_csv(archive.annotations_csv)


def _header(archive, name):
    """(soundfile info, GUANO metadata) of a recording named without extension."""
    path = archive.root / f"{name}.wav"
    return soundfile.info(path), guano.GuanoFile(str(path))


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _group_peak_khz(group):
    bounds = [b for m in SPECIES_MODELS if m.group == group for t in m.call_types for b in t.peak_khz]
    return min(bounds), max(bounds)


def _band_power(samples, rate, low, high):
    """Instantaneous power of the signal restricted to [low, high] Hz (FFT mask)."""
    n = scipy.fft.next_fast_len(samples.size, real=True)
    spectrum = np.fft.rfft(samples, n)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, n)[:samples.size] ** 2


# --- the archive on disk ----------------------------------------------------------------------


def test_files_are_pcm16_mono_wavs_at_the_drawn_rates(archive):
    assert archive.files == sorted(archive.files)
    assert {Path(f).parent.as_posix() for f in archive.files} <= {"site01", "site02"}
    for name in archive.files:
        datetime.strptime(Path(name).stem, "%Y%m%d_%H%M%S")
        info = soundfile.info(archive.root / name)
        meta = guano.GuanoFile(str(archive.root / name))
        assert (info.channels, info.subtype, info.format) == (1, "PCM_16", "WAV")
        assert info.samplerate * meta["TE"] in RATES


def test_total_duration_is_the_requested_minutes(archive):
    real = sum(
        soundfile.info(archive.root / f).frames / guano.GuanoFile(str(archive.root / f))["Samplerate"]
        for f in archive.files
    )
    assert real == pytest.approx(30.0, abs=1e-3)
    assert archive.duration_s == pytest.approx(real)
    lengths = [soundfile.info(archive.root / f).duration for f in archive.files]
    assert len(lengths) >= 4


def test_guano_chunk_and_time_expansion(archive):
    expansions = Counter()
    for name in archive.files:
        info = soundfile.info(archive.root / name)
        meta = guano.GuanoFile(str(archive.root / name))
        assert (meta["Make"], meta["Model"], meta["GUANO|Version"]) == ("batml", "simulate", "1.0")
        assert meta["Timestamp"].strftime("%Y%m%d_%H%M%S") == Path(name).stem
        assert meta["TE"] in (1, 10)
        assert info.samplerate == meta["Samplerate"] // meta["TE"]
        expansions[meta["TE"]] += 1
    assert expansions[10] == round(0.3 * len(archive.files))
    assert expansions[1] > 0


def test_npz_round_trips_safely_and_with_plain_numpy(archive, calls_table):
    dataset = read_reference_npz(archive.annotations_npz)
    recordings = dataset.train + dataset.test
    assert dataset.has_classes
    assert sorted(f"{r.file}.wav" for r in recordings) == archive.files
    assert sum(r.positions.size for r in recordings) == archive.n_calls == len(calls_table)
    with np.load(archive.annotations_npz, allow_pickle=True) as seed:
        assert list(seed["train_files"]) == [r.file for r in dataset.train]
        for i, recording in enumerate(dataset.test):
            np.testing.assert_array_equal(seed["test_pos"][i], recording.positions)
            np.testing.assert_array_equal(seed["test_class"][i], recording.classes)
    for split, split_recordings in (("train", dataset.train), ("test", dataset.test)):
        for recording in split_recordings:
            rows = calls_table[calls_table["file"] == recording.file]
            assert set(rows["split"]) <= {split}
            np.testing.assert_array_equal(rows["position"].to_numpy(), recording.positions)
            np.testing.assert_array_equal(rows["class"].to_numpy(), recording.classes)
            info, meta = _header(archive, recording.file)
            assert recording.duration == pytest.approx(info.frames / meta["Samplerate"])
    assert len(dataset.test) == round(0.25 * len(recordings))


def test_positions_lie_within_recordings_and_classes_match_groups(archive, calls_table):
    durations = {r.file: r.duration for s in (read_reference_npz(archive.annotations_npz),) for r in s.train + s.test}
    assert (calls_table["position"] >= 0).all()
    assert (calls_table["end"] <= calls_table["file"].map(durations) + 1e-12).all()
    assert (calls_table["end"] > calls_table["position"]).all()
    np.testing.assert_allclose(calls_table["call_duration"], calls_table["end"] - calls_table["position"], atol=1e-12)
    # ``duration`` is the recording's, as `batml train` reads a CSV of calls
    np.testing.assert_allclose(calls_table["duration"], calls_table["file"].map(durations), rtol=1e-12)
    assert (calls_table["species_group"] == [REFERENCE_GROUPS[c - 1] for c in calls_table["class"]]).all()
    assert (calls_table["low_freq"] < calls_table["high_freq"]).all()


def test_empty_files_exist(archive):
    dataset = read_reference_npz(archive.annotations_npz)
    counts = [r.positions.size for r in dataset.train + dataset.test]
    assert counts.count(0) == round(0.25 * len(counts))
    assert max(counts) > 0


def test_multi_bat_scenes_share_positions_across_classes(tmp_path):
    archive = simulate_archive(tmp_path, minutes=0.25, seed=5, overlap_fraction=1.0, empty_fraction=0.0)
    table = pd.read_csv(archive.annotations_csv)
    for name, rows in table.groupby("file"):
        classes_at = rows.groupby("position")["class"].nunique()
        assert classes_at.max() >= 2, name
        assert rows["class"].nunique() >= 2, name


def test_every_group_is_drawn(tmp_path):
    # Structurally: every group has a species that fits the lowest default rate, and the scene
    # drawer reaches them all.
    assert {m.label for m in eligible_species(min(RATES))} == set(range(1, len(REFERENCE_GROUPS) + 1))
    drawn = {
        call.species.label
        for seed in range(60)
        for call in draw_calls(250_000, 250_000, 1, 1e-3, np.random.default_rng(seed))
    }
    assert drawn == set(range(1, len(REFERENCE_GROUPS) + 1))
    # And a 3-minute archive holds them all (for this seed).
    archive = simulate_archive(tmp_path, minutes=3, seed=1)
    assert set(pd.read_csv(archive.annotations_csv)["class"]) == set(range(1, len(REFERENCE_GROUPS) + 1))


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    options = {"minutes": 0.2, "time_expanded_fraction": 0.5, "overlap_fraction": 0.5}
    first = _digests(simulate_archive(tmp_path / "a", seed=3, **options).root)
    second = _digests(simulate_archive(tmp_path / "b", seed=3, **options).root)
    other = _digests(simulate_archive(tmp_path / "c", seed=4, **options).root)
    assert first == second
    assert "annotations.npz" in first and "annotations.csv" in first
    assert set(first.values()).isdisjoint(other.values())


@pytest.mark.parametrize(
    "options",
    [
        {"empty_fraction": 1.5},
        {"file_seconds": (2.0, 1.0)},
        {"sample_rates": (250_005,), "time_expanded_fraction": 0.5},
        {"minutes": 0.001},
        {"sample_rates": (44_100,)},
    ],
)
def test_bad_arguments_are_refused(tmp_path, options):
    with pytest.raises(ValueError):
        simulate_archive(tmp_path, **{"minutes": 0.1, **options})


# --- call physics -----------------------------------------------------------------------------


@pytest.mark.parametrize("species", SPECIES_MODELS, ids=lambda m: m.species)
def test_call_spectrum_peaks_in_its_group_range(species):
    # Tolerance: the spectral resolution of a 2 ms call (0.5 kHz) plus ripple.
    low, high = _group_peak_khz(species.group)
    rng = np.random.default_rng(0)
    rate = 500_000
    calls = draw_pass(species, rate, 4 * rate, centre=2.0, anchor=2.0, noise_rms=1e-4, rng=rng)[:12]
    assert calls
    for call in calls:
        wave = synthesize_call(call)
        spectrum = np.abs(np.fft.rfft(wave, 1 << 16))
        peak_khz = np.fft.rfftfreq(1 << 16, 1 / rate)[np.argmax(spectrum)] / 1e3
        assert low - 1.0 <= peak_khz <= high + 1.0, (call.species.species, peak_khz)


def test_call_energy_lies_in_its_annotated_span():
    for seed in range(8):
        rate = RATES[seed % len(RATES)]
        recording = simulate_recording(rate, 2 * rate, 1, np.random.default_rng(seed))
        samples = recording.samples.astype(np.float64)
        loudest = max(recording.calls, key=lambda call: call.amplitude)
        power = _band_power(samples, rate, loudest.low_hz - 2e3, loudest.high_hz + 2e3)
        span = power[loudest.onset:loudest.onset + loudest.length].mean()
        before = power[max(loudest.onset - loudest.length, 0):loudest.onset].mean()
        assert span > 4 * np.median(power), seed
        assert span > 2 * before, seed


def test_annotated_calls_stand_out_in_the_written_files(archive, calls_table):
    # End to end, through the WAV files (time-expanded ones included): the band power inside
    # the annotated spans is well above each file's typical band power.
    ratios = []
    for name, rows in calls_table.groupby("file"):
        info, meta = _header(archive, name)
        samples, _ = soundfile.read(archive.root / f"{name}.wav", dtype="float64")
        rate = meta["Samplerate"]
        power = _band_power(samples, rate, rows["low_freq"].min() - 2e3, rows["high_freq"].max() + 2e3)
        floor = np.median(power)
        ratios += [
            power[round(row.position * rate):round(row.end * rate)].mean() / floor for row in rows.itertuples()
        ]
    assert np.median(ratios) > 20


def test_rhinolophus_hipposideros_only_where_nyquist_allows():
    hipposideros = next(m for m in SPECIES_MODELS if m.species == "Rhinolophus hipposideros")
    assert hipposideros not in eligible_species(192_000)
    assert hipposideros in eligible_species(250_000)
    for rate in (192_000, 250_000):
        species = {
            call.species.species
            for seed in range(150)
            for call in draw_calls(rate, rate, 2, 1e-3, np.random.default_rng(seed))
        }
        assert ("Rhinolophus hipposideros" in species) == (rate == 250_000)
        assert "Rhinolophus ferrumequinum" in species
