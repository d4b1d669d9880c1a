"""Each factor of the simulator changes what it claims, measured on the rendered signal.

Also: the settings and their command line, the annotations of the randomised archive, and
reproducibility whatever the settings (issue 16).
"""

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.signal
import soundfile

from pipeline.cli import build_parser, main
from pipeline.config import REFERENCE_GROUPS
from pipeline.simulation import (
    CSV_COLUMNS,
    EVENTS,
    GENERIC_SHAPE_MODELS,
    SPECIES_MODELS,
    Air,
    AirPath,
    Call,
    CallType,
    Harmonic,
    Recorder,
    SimulationError,
    SimulationSettings,
    SpeciesModel,
    attenuation_db_per_m,
    draw_calls,
    draw_pass,
    noise,
    render_call,
    simulate_archive,
    simulate_recording,
    speed_of_sound,
)
from pipeline.simulation.calls import add_call
from pipeline.simulation.noise import BackgroundLibrary
from pipeline.simulation.settings import settings_from_arguments

QUIET = dict(low_frequency_noise_probability=0.0, insect_band_probability=0.0, click_probability=0.0)


def _sweep(rate: int, start_hz: float, end_hz: float, ms: float = 4.0, **fields) -> Call:
    """A linear FM call with a flat envelope between short ramps."""
    species = SPECIES_MODELS[0]
    return Call(species=species, rate=rate, onset=0, length=int(ms * 1e-3 * rate),
                contour=((0.0, start_hz), (1.0, end_hz)), envelope=((0.0, 0.0), (0.05, 1.0), (0.95, 1.0), (1.0, 0.0)),
                amplitude=0.1, harmonics=(), **fields)


def _band_energy(wave: np.ndarray, rate: int, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave, 1 << 18)) ** 2
    freqs = np.fft.rfftfreq(1 << 18, 1 / rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


def _db(x: float) -> float:
    return 10 * math.log10(x)


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- settings and command line -----------------------------------------------------------------


def test_every_setting_is_an_option_of_batml_simulate(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for item in dataclasses.fields(SimulationSettings):
        option = "--" + item.name.replace("_", "-")
        assert option in text, option
        assert " ".join(item.metadata["help"].split()[:4]) in text, item.name


def test_options_override_the_preset():
    args = build_parser().parse_args([
        "simulate", "out", "--preset", "varied", "--generic-fraction", "0.2", "--no-propagation",
        "--sample-rates", "384000", "500000", "--distance-m", "2", "3",
    ])
    assert settings_from_arguments(args) == SimulationSettings.varied(
        generic_fraction=0.2, propagation=False, sample_rates=(384_000, 500_000), distance_m=(2.0, 3.0))
    plain = build_parser().parse_args(["simulate", "out"])
    assert settings_from_arguments(plain) == SimulationSettings()


def test_bad_settings_are_one_line_naming_each(tmp_path, capsys):
    with pytest.raises(SimulationError, match=r"buzz_probability=1.5 .*echo_delay_ms=\(5.0, 1.0\)"):
        SimulationSettings(buzz_probability=1.5, echo_delay_ms=(5.0, 1.0))
    with pytest.raises(SimulationError, match="background_licence"):
        SimulationSettings(background_folder=tmp_path)
    code = main(["simulate", str(tmp_path / "x"), "--minutes", "0.1", "--microphones", "flat", "--gain-db", "3", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "gain_db" in err


def test_an_unused_factor_changes_no_byte(tmp_path):
    # Factors that are off draw nothing: ranges of a microphone never drawn change nothing.
    plain = simulate_archive(tmp_path / "a", minutes=0.1, seed=2)
    other = simulate_archive(tmp_path / "b", minutes=0.1, seed=2, rolloff_khz=(50.0, 60.0), distance_m=(3.0, 4.0))
    wavs = {k: v for k, v in _digests(plain.root).items() if k.endswith(".wav")}
    assert wavs and wavs == {k: v for k, v in _digests(other.root).items() if k.endswith(".wav")}


def test_same_seed_same_bytes_with_every_factor_on(tmp_path):
    settings = SimulationSettings.varied(eight_bit_fraction=0.3, buzz_probability=0.5, social_probability=0.5)
    first = _digests(simulate_archive(tmp_path / "a", minutes=0.25, seed=8, settings=settings).root)
    again = _digests(simulate_archive(tmp_path / "b", minutes=0.25, seed=8, settings=settings).root)
    other = _digests(simulate_archive(tmp_path / "c", minutes=0.25, seed=9, settings=settings).root)
    assert first == again
    assert {"annotations.csv", "recordings.csv", "simulation.json"} <= set(first)
    assert "annotations.npz" not in first
    wav = {v for k, v in first.items() if k.endswith(".wav")}
    assert wav.isdisjoint(v for k, v in other.items() if k.endswith(".wav"))


# --- annotations ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    settings = SimulationSettings.varied(buzz_probability=0.5, social_probability=0.5)
    return simulate_archive(tmp_path_factory.mktemp("varied"), minutes=0.5, seed=5, settings=settings)


def test_varied_archive_labels_class_and_event(varied):
    table = pd.read_csv(varied.annotations_csv)
    assert tuple(table.columns) == CSV_COLUMNS
    assert set(table["event"]) == set(EVENTS)
    assert set(table["class"]) <= set(REFERENCE_GROUPS) | {"bat"} and "bat" in set(table["class"])
    assert (table["class"] == table["species_group"]).all()
    assert (table["end"] > table["position"]).all() and (table["low_freq"] < table["high_freq"]).all()
    assert varied.annotations_npz is None and not (varied.root / "annotations.npz").exists()
    assert any("annotations.npz not written" in note for note in varied.notes)
    meta = json.loads(varied.metadata.read_text())
    assert meta["settings"]["generic_fraction"] == 0.5 and meta["annotations_npz"] is False
    assert sum(item["count"] for item in meta["calls"]) == len(table)
    drawn = pd.read_csv(varied.recordings_csv)
    assert sorted(drawn["file"] + ".wav") == varied.files
    assert drawn["n_calls"].sum() == len(table)


def test_social_calls_are_low_and_long(varied):
    table = pd.read_csv(varied.annotations_csv)
    social, echolocation = table[table["event"] == "social"], table[table["event"] == "echolocation"]
    assert len(social) >= 3
    assert (social["high_freq"] <= 35e3 * 1.001).all() and (social["low_freq"] >= 10e3 * 0.999).all()
    assert social["call_duration"].median() > 2 * echolocation["call_duration"].median()


def test_calls_stand_out_in_the_varied_files(varied):
    # Whatever the recorder, noise and level did, annotated calls are in the files: their band
    # power inside the annotated span exceeds the file's typical band power.
    table = pd.read_csv(varied.annotations_csv)
    ratios = []
    for name, rows in table.groupby("file"):
        samples, header_rate = soundfile.read(varied.root / f"{name}.wav", dtype="float64")
        rate = header_rate * (10 if header_rate < 96_000 else 1)
        for row in rows.itertuples():
            sos = scipy.signal.butter(4, (max(row.low_freq - 2e3, 1e3), min(row.high_freq + 2e3, 0.49 * rate)),
                                      btype="bandpass", fs=rate, output="sos")
            a, b = round(row.position * rate), round(row.end * rate)
            around = max(a - rate // 5, 0)                               # 200 ms of context
            power = scipy.signal.sosfiltfilt(sos, samples[around:b + rate // 5]) ** 2
            ratios.append(power[a - around:b - around].mean() / np.median(power))
    assert np.median(ratios) > 5


# --- the generic family and behaviours -----------------------------------------------------------


def test_generic_family_spans_its_ranges():
    settings = SimulationSettings(generic_fraction=1.0, **QUIET)
    calls, shapes, loudest = [], set(), set()
    for seed in range(150):
        rng = np.random.default_rng(seed)
        for call in draw_calls(500_000, 500_000, 1, 1e-4, rng, settings=settings):
            calls.append(call)
            shapes.add(call.species.species)
            loudest.add(call.loudest_multiple)
    low = np.array([c.low_hz for c in calls])
    high = np.array([c.high_hz for c in calls])
    ms = np.array([1e3 * c.length / c.rate for c in calls])
    assert {c.class_name for c in calls} == {"bat"}
    assert shapes == {f"generic {name}" for name in GENERIC_SHAPE_MODELS}
    assert {1.0, 2.0, 3.0} <= loudest
    assert low.min() >= 10e3 * 0.999 and high.max() <= 150e3 * 1.001
    assert low.min() < 13e3 and high.max() > 140e3
    assert ms.min() >= 0.5 * 0.99 and ms.max() <= 60 * 1.01
    assert ms.min() < 0.8 and ms.max() > 45


def test_a_loudest_second_harmonic_is_the_loudest():
    species = SpeciesModel("test", "bat", "FM", (CallType((60, 60), (30, 30), (45, 45), (3, 3)),), (80, 80), (20, 20),
                           harmonics=(Harmonic(2.0, (0.0, 0.0)),),
                           fundamental_db=(-12.0, -12.0), dominant=2.0)
    rate = 500_000
    calls = draw_pass(species, rate, rate, centre=0.5, anchor=0.5, noise_rms=1e-4, rng=np.random.default_rng(0))
    wave = render_call(calls[0])[0]
    first, second = _band_energy(wave, rate, 25e3, 65e3), _band_energy(wave, rate, 55e3, 125e3)
    assert _db(second / first) == pytest.approx(12.0, abs=1.5)
    assert calls[0].low_hz == pytest.approx(2 * 30e3, rel=0.01) and calls[0].high_hz == pytest.approx(120e3, rel=0.01)


def test_buzzes_have_short_intervals_and_short_calls():
    settings = SimulationSettings(buzz_probability=1.0, **QUIET)
    rate = 384_000
    for seed in range(5):
        calls = draw_pass(SPECIES_MODELS[10], rate, 10 * rate, centre=5.0, anchor=5.0, noise_rms=1e-7,
                          rng=np.random.default_rng(seed), settings=settings)
        buzz = [c for c in calls if c.event == "buzz"]
        search = [c for c in calls if c.event == "echolocation"]
        assert len(buzz) >= 13 and search
        gaps = 1e3 * np.diff([c.position for c in buzz])
        assert gaps[0] > 10.0                                        # the interval falls...
        terminal = gaps[-7:]                                         # ...to buzz II, ~5 ms
        assert np.all((terminal > 4.0 * 0.8) & (terminal < 7.0 * 1.2))
        assert all(0.3 * 0.99 <= 1e3 * c.length / rate <= 1.0 * 1.01 for c in buzz[-7:])
        assert 1e3 * np.median(np.diff([c.position for c in search])) > 60


# --- propagation ---------------------------------------------------------------------------------


def test_absorption_matches_the_standard_tables():
    # ISO 9613-2, Table 2 (dB/km), at the exact mid-band frequencies of 500 Hz-8 kHz.
    mid = 1000 * 10 ** (np.array([-3, 0, 3, 6, 9]) / 10)
    np.testing.assert_allclose(1e3 * attenuation_db_per_m(mid, 20.0, 70.0), [2.8, 5.0, 9.0, 22.9, 76.6], rtol=0.03)
    np.testing.assert_allclose(1e3 * attenuation_db_per_m(mid, 10.0, 70.0), [1.9, 3.7, 9.7, 32.8, 117.0], rtol=0.03)
    alpha = attenuation_db_per_m(np.linspace(10e3, 150e3, 30), 15.0, 60.0)
    assert np.all(np.diff(alpha) > 0)


def test_absorption_lowers_high_frequencies_more_and_more_with_distance():
    rate = 500_000
    air = Air(20.0, 50.0)
    bands = ((90e3, 110e3), (25e3, 35e3))
    measured, expected = {}, {}
    for distance in (1.0, 10.0, 30.0):
        call = _sweep(rate, 120e3, 20e3, path=AirPath(air, distance, 40e3))
        wave = render_call(call)[0]
        measured[distance] = _db(_band_energy(wave, rate, *bands[0]) / _band_energy(wave, rate, *bands[1]))
        # what a flat band loses to air over ``distance``, relative to the other band
        loss = [np.mean(10 ** (-air.alpha(np.linspace(*band, 200)) * distance / 10)) for band in bands]
        expected[distance] = _db(loss[0] / loss[1])
    assert measured[1.0] > measured[10.0] > measured[30.0]
    assert measured[10.0] - measured[30.0] == pytest.approx(expected[10.0] - expected[30.0], abs=1.0)
    assert measured[10.0] - measured[30.0] > 30.0


def test_doppler_shifts_frequency_and_duration_by_the_expected_ratio():
    rate = 500_000
    tone = SpeciesModel("test CF", "Rhisp", "CF", (CallType((55, 55), (50, 50), (60, 60), (30, 30)),), (80, 80),
                        (30, 30), harmonics=())
    settings = SimulationSettings(propagation=True, distance_m=(4.0, 4.0), flight_speed_m_s=(10.0, 10.0),
                                  echo_count=(0, 0))
    air = Air(20.0, 50.0)
    calls = draw_pass(tone, rate, 5 * rate, centre=2.5, anchor=2.5, noise_rms=1e-6, rng=np.random.default_rng(1),
                      settings=settings, air=air)
    assert len(calls) > 10
    for call in calls[::3]:
        wave = render_call(call)[0]
        spectrum = np.abs(np.fft.rfft(wave, 1 << 21))
        measured = np.fft.rfftfreq(1 << 21, 1 / rate)[np.argmax(spectrum)]
        along = 10.0 * (call.position - 2.5)
        radial = 10.0 * along / math.hypot(4.0, along)
        ratio = speed_of_sound(20.0) / (speed_of_sound(20.0) + radial)
        assert measured / 60e3 == pytest.approx(ratio, abs=2e-4)
        assert call.length == pytest.approx(0.030 * rate / ratio, abs=1)
    shifts = [c.contour[1][1] / 60e3 for c in calls]
    assert max(shifts) > 1.02 and min(shifts) < 0.98          # up while approaching, down when leaving
    still = draw_pass(tone, rate, 5 * rate, centre=2.5, anchor=2.5, noise_rms=1e-6, rng=np.random.default_rng(1),
                      settings=settings.replace(doppler=False), air=air)
    assert {c.contour[1][1] for c in still} == {60e3}


def test_echoes_add_delayed_energy_and_late_ones_are_duller():
    rate = 384_000
    delay = int(0.003 * rate)
    dry = _sweep(rate, 80e3, 30e3, ms=2.0)
    wet = dataclasses.replace(dry, echoes=((delay, 0.5),))
    signals = {}
    for name, call in (("dry", dry), ("wet", wet)):
        samples = np.zeros(rate // 10)
        add_call(samples, call)
        signals[name] = samples
    after = slice(dry.length + 10, dry.length + delay + dry.length)
    assert np.sum(signals["dry"][after] ** 2) == 0.0
    echo = signals["wet"][after]
    assert _db(np.sum(echo ** 2) / np.sum(signals["wet"][:dry.length] ** 2)) == pytest.approx(-6.0, abs=0.5)
    lags = scipy.signal.correlation_lags(signals["wet"].size, signals["dry"].size)
    residual = scipy.signal.correlate(signals["wet"] - signals["dry"], signals["dry"])
    assert lags[np.argmax(residual)] == delay
    # Through air, a late echo has lost more of its high frequencies than an early one.
    air = Air(20.0, 50.0)
    reverb = dataclasses.replace(dry, path=AirPath(air, 5.0, 50e3),
                                 echoes=((int(0.002 * rate), 0.5), (int(0.03 * rate), 0.5)))
    _, echoes = render_call(reverb)
    tilt = [_db(_band_energy(w, rate, 70e3, 80e3) / _band_energy(w, rate, 30e3, 40e3)) for _, w in echoes]
    assert tilt[0] - tilt[1] > 3.0


# --- recorder ------------------------------------------------------------------------------------


def test_a_rolloff_microphone_lowers_the_high_bands():
    rate = 500_000
    call = _sweep(rate, 150e3, 15e3)
    flat = render_call(call, Recorder(rate).response)[0]
    rolled = Recorder(rate, microphone="rolloff", corner_hz=60e3, order=3.0)
    dull = render_call(call, rolled.response)[0]
    loss = {band: _db(_band_energy(flat, rate, *band) / _band_energy(dull, rate, *band))
            for band in ((20e3, 30e3), (110e3, 130e3))}
    curve = -_db(np.mean(rolled.microphone_gain(np.linspace(110e3, 130e3, 200)) ** 2))   # 18 dB/octave above 60 kHz
    assert loss[(20e3, 30e3)] < 0.5
    assert loss[(110e3, 130e3)] == pytest.approx(curve, abs=1.0) and loss[(110e3, 130e3)] > 15.0


def test_a_resonant_microphone_lifts_its_peak():
    rate = 500_000
    mic = Recorder(rate, microphone="resonant", corner_hz=100e3, order=2.0, resonance_hz=30e3, resonance_db=10.0)
    gains = 20 * np.log10(mic.microphone_gain(np.array([10e3, 30e3, 60e3])))
    assert gains[1] == pytest.approx(10.0, abs=0.5) and gains[1] > gains[0] + 3 and gains[1] > gains[2] + 3


def test_low_rate_files_hold_nothing_above_nyquist():
    rate = 192_000
    call = _sweep(rate, 150e3, 40e3, ms=5.0)
    wave = render_call(call, Recorder(rate).response)[0]
    inst = np.interp(np.linspace(0, 1, call.length), (0, 1), (150e3, 40e3))
    above, below = wave[inst > rate / 2], wave[inst < 0.9 * rate / 2]
    assert np.sum(above ** 2) == 0.0 and np.sum(below ** 2) > 0   # no aliased image of the cut part
    settings = SimulationSettings(generic_fraction=1.0, sample_rates=(192_000,), **QUIET)
    highs = [c.high_hz for seed in range(40)
             for c in draw_calls(rate, rate, 2, 1e-4, np.random.default_rng(seed), settings=settings)]
    assert highs and max(highs) <= rate / 2
    assert sum(h == rate / 2 for h in highs) > 0                   # some sweeps were cut by Nyquist


def test_clipping_clips():
    rate = 250_000
    settings = SimulationSettings(clipping_fraction=1.0, **QUIET)
    recording = simulate_recording(rate, rate, 1, np.random.default_rng(3), settings=settings)
    codes = recording.samples.astype(np.int32)
    at_limit = (codes >= 32767) | (codes <= -32768)
    assert recording.factors["clipped"] and at_limit.sum() > 10
    assert np.any(at_limit[1:] & at_limit[:-1])                    # flat tops, not single peaks
    plain = simulate_recording(rate, rate, 1, np.random.default_rng(3), settings=SimulationSettings(**QUIET))
    assert np.abs(plain.samples.astype(np.int32)).max() < 32767


def test_a_lower_antialias_edge_shapes_the_noise():
    rate = 384_000
    settings = SimulationSettings(antialias_edge=(0.7, 0.7), **QUIET)
    samples = simulate_recording(rate, rate, 0, np.random.default_rng(0), settings=settings).samples.astype(float)
    f, psd = scipy.signal.welch(samples, rate, nperseg=1024)
    nyquist = rate / 2
    assert psd[(f > 0.97 * nyquist)].mean() < 0.05 * psd[(f > 0.3 * nyquist) & (f < 0.6 * nyquist)].mean()


def test_eight_bit_files_and_time_expansion_without_guano(tmp_path):
    archive = simulate_archive(tmp_path, minutes=0.1, seed=1, eight_bit_fraction=1.0, time_expanded_fraction=1.0,
                               guano=False)
    for name in archive.files:
        info = soundfile.info(tmp_path / name)
        assert info.subtype == "PCM_U8" and info.samplerate in {25_000, 25_600, 38_400, 50_000}
        assert b"guan" not in (tmp_path / name).read_bytes()[-4096:]


# --- noise ---------------------------------------------------------------------------------------


def test_insect_trains_are_pulsed_in_their_band():
    rate = 250_000
    rng = np.random.default_rng(4)
    train = noise.insect_train(2 * rate, rate, 0.01, (30.0, 30.0), rng)
    inside = _band_energy(train, rate, 15e3, 45e3)
    assert inside / _band_energy(train, rate, 0, rate / 2) > 0.95
    frames = (train[: train.size // 500 * 500].reshape(-1, 500) ** 2).mean(axis=1)    # 2 ms frames
    assert np.percentile(frames, 10) < 0.01 * np.percentile(frames, 90)               # sound and silence alternate
    assert 0.05 < np.mean(frames > 0.1 * frames.max()) < 0.95


def test_electrical_tones_are_narrow_and_constant():
    rate = 384_000
    settings = SimulationSettings(electrical_probability=1.0, noise_dbfs=(-70.0, -70.0), **QUIET)
    recording = simulate_recording(rate, rate, 0, np.random.default_rng(2), settings=settings)
    assert "electrical" in recording.factors["noises"]
    samples = recording.samples.astype(float)
    f, _, spec = scipy.signal.stft(samples, rate, nperseg=4096)
    band = (f > 5e3) & (f < 0.9 * rate / 2)
    peaks = f[band][np.argmax(np.abs(spec[band]), axis=0)[2:-2]]
    assert np.ptp(peaks) == 0                                                         # the same line all along
    psd_f, psd = scipy.signal.welch(samples, rate, nperseg=1 << 15)
    top = np.argmax(np.where((psd_f > 5e3), psd, 0))
    wide = psd_f[psd > psd[top] / 10]
    near = wide[np.abs(wide - psd_f[top]) < 5e3]
    assert np.ptp(near) < 200                                                         # narrower than 200 Hz


def test_rain_and_wind_are_where_they_claim():
    rate = 250_000
    rng = np.random.default_rng(0)
    drops = noise.rain(rate, rate, 1e-3, rng)
    assert _band_energy(drops, rate, 60e3, 100e3) > 0.2 * _band_energy(drops, rate, 10e3, 50e3)   # broadband
    gust = noise.wind(4 * rate, rate, 1e-2, 1e-4, rng)
    assert _band_energy(gust, rate, 0, 3e3) > 100 * _band_energy(gust, rate, 30e3, rate / 2)      # low-frequency
    level = (gust[: gust.size // 25_000 * 25_000].reshape(-1, 25_000) ** 2).mean(axis=1)         # 0.1 s frames
    assert level.max() > 4 * level.min()                                                        # gusty


# --- real backgrounds ----------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_backgrounds_are_used_and_recorded(tmp_path, real_data):
    folder = tmp_path / "backgrounds"
    folder.mkdir()
    quiet = real_data / "unannotated" / "AudiomothNoBatCalls.WAV"
    tadarida = sorted((real_data / "tadarida_rsdb" / "RSDB_sample" / "20160822").glob("*.wav"))[0]
    (folder / quiet.name).write_bytes(quiet.read_bytes())
    (folder / tadarida.name).write_bytes(tadarida.read_bytes())
    # Tadarida's own detector lists every sound event (StTime, Dur in real ms): leave them out.
    events = pd.read_csv(tadarida.parent / "txt" / f"{tadarida.stem}.ta", sep="\t")
    spans = pd.DataFrame({"file": tadarida.stem, "position": events["StTime"] / 1e3,
                          "end": (events["StTime"] + events["Dur"]) / 1e3})
    spans.to_csv(tmp_path / "spans.csv", index=False)
    library = BackgroundLibrary(folder, tmp_path / "spans.csv", time_expansion=10)
    free = {item.name: item for item in library.files}
    assert free[tadarida.name].rate == 384_000 and free[quiet.name].rate == 250_000
    for a, b in free[tadarida.name].free:
        assert not any(a < e + 0.05 and s - 0.05 < b for s, e in zip(spans["position"], spans["end"], strict=True))
    # Their energy appears: with the self-noise far below, a recording's spectrum is the real one's.
    settings = SimulationSettings(background_folder=folder, background_exclude=tmp_path / "spans.csv",
                                  background_licence="GPL-3 and CC BY-NC 4.0", background_probability=1.0,
                                  background_time_expansion=10, background_gain_db=(0.0, 0.0),
                                  noise_dbfs=(-110.0, -110.0), **QUIET)
    rate = 384_000
    real, _ = soundfile.read(tadarida, dtype="float64")
    quiet_parts = np.concatenate([real[int(a * rate):int(b * rate)] for a, b in free[tadarida.name].free])
    real_f, real_psd = scipy.signal.welch(quiet_parts, rate, nperseg=2048)
    for seed in range(12):
        recording = simulate_recording(rate, rate, 0, np.random.default_rng(seed), settings=settings,
                                       backgrounds=BackgroundLibrary(folder, tmp_path / "spans.csv", 10))
        samples = recording.samples.astype(float) / 32767
        if recording.factors["background"] == tadarida.name:
            _, psd = scipy.signal.welch(samples, rate, nperseg=2048)
            keep = (real_f > 2e3) & (real_f < 180e3)
            assert np.corrcoef(np.log(psd[keep]), np.log(real_psd[keep]))[0, 1] > 0.9
            assert abs(20 * math.log10(samples.std() / quiet_parts.std())) < 3
        else:
            assert np.abs(recording.samples).max() <= 2                 # AudioMoth's near-silence, resampled
    archive = simulate_archive(tmp_path / "archive", minutes=0.1, seed=3, settings=settings)
    again = simulate_archive(tmp_path / "again", minutes=0.1, seed=3, settings=settings)
    assert _digests(archive.root) == _digests(again.root)          # same seed, same bytes, backgrounds too
    meta = json.loads(archive.metadata.read_text())["backgrounds"]
    assert meta["licence"] == "GPL-3 and CC BY-NC 4.0"
    used = {item["file"]: item["sha256"] for item in meta["files"]}
    assert used and set(used) <= {quiet.name, tadarida.name}
    for name, digest in used.items():
        assert digest == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert set(pd.read_csv(archive.recordings_csv)["background"]) <= {quiet.name, tadarida.name}
