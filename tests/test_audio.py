"""Reading one recording: header, GUANO, usability and decoding (pipeline.io.audio)."""

import os
import pickle

import fsspec
import numpy as np
import pytest
import soundfile

from pipeline.config import SpectrogramSettings
from pipeline.io.audio import RecordingError, channel_units, check_usable, file_status, read_info, read_samples
from pipeline.testing import OK, tone, write_bad_corpus, write_tone

NON_FINITE = "contains NaN or infinite samples"
SETTINGS = SpectrogramSettings()
RATE = 384_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_bad_corpus(folder)


def outcome(path):
    """'ok', or the reason a recording is refused at the header, usability or decoding step."""
    try:
        info = read_info(path)
        check_usable(info, SETTINGS)
        for channel in channel_units(info.channels, "each"):
            read_samples(path, channel=channel)
    except RecordingError as exc:
        assert "\n" not in str(exc) and str(exc) == f"{path}: {exc.reason}"
        return exc.reason
    return OK


def test_every_corpus_file_gets_its_expected_outcome(corpus):
    folder, expectations = corpus
    wrong = {
        name: reason
        for name, expected in expectations.items()
        if expected not in (reason := outcome(folder / name))
    }
    assert not wrong


def test_recording_error_is_one_line_keeps_its_parts_and_pickles():
    error = RecordingError("a/b.wav", "broken\nheader  here")
    assert str(error) == "a/b.wav: broken header here"
    assert (error.path, error.reason) == ("a/b.wav", "broken header here")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.reason) == (RecordingError, str(error), error.reason)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("name", ["claims_gigabytes.wav", "claims_gigabytes_float.wav"])
def test_header_claiming_gigabytes_gives_the_frames_really_there(corpus, name):
    path = corpus[0] / name
    info = read_info(path)
    bytes_per_frame = {"PCM_16": 2, "FLOAT": 4}[info.subtype]
    assert 0 < info.frames <= (info.size - 44) // bytes_per_frame
    assert "data truncated: header claims 4294967040 bytes" in info.note
    assert read_samples(path).shape == (info.frames,)


def test_truncated_data_reads_what_is_there_and_refuses_more(corpus):
    path = corpus[0] / "truncated_data.wav"
    info = read_info(path)
    assert info.frames == RATE * 0.1 // 2
    assert read_samples(path).shape == (info.frames,)
    with pytest.raises(RecordingError, match="data truncated") as caught:
        read_samples(path, 0, info.frames + 1)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["float_nan.wav", "float_inf.wav"])
def test_non_finite_samples_are_refused_in_the_range_read(corpus, name):
    path = corpus[0] / name
    info = read_info(path)
    half = info.frames // 2
    assert np.isfinite(read_samples(path, 0, half)).all()
    assert np.isfinite(read_samples(path, half + 1)).all()
    with pytest.raises(RecordingError, match=NON_FINITE) as caught:
        read_samples(path, half - 10, half + 10)
    assert str(caught.value) == f"{path}: {NON_FINITE} (first at frame {half})"


@pytest.mark.parametrize(
    ("subtype", "step"),
    [
        ("PCM_U8", 2**-7),
        ("PCM_16", 2**-15),
        ("PCM_24", 2**-23),
        ("PCM_32", 2**-31),
        ("FLOAT", 0),
        ("DOUBLE", 0),
    ],
)
def test_every_sample_format_decodes_to_the_same_waveform(tmp_path, subtype, step):
    path = write_tone(tmp_path / f"{subtype}.wav", RATE, 0.05, 40_000.0, subtype=subtype)
    samples = read_samples(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    np.testing.assert_allclose(samples, tone(RATE, 0.05, 40_000.0)[:, 0], rtol=0, atol=step + 1e-7)
    assert read_info(path).subtype == subtype


def test_a_range_read_equals_the_slice_of_the_whole(tmp_path):
    path = write_tone(tmp_path / "stereo.wav", RATE, 0.05, 40_000.0, channels=2)
    for channel in (0, 1, "mix"):
        whole = read_samples(path, channel=channel)
        np.testing.assert_array_equal(read_samples(path, 1000, 5000, channel=channel), whole[1000:5000])
        np.testing.assert_array_equal(read_samples(path, 5000, channel=channel), whole[5000:])
    assert read_samples(path, 7, 7).shape == (0,)
    with pytest.raises(ValueError, match="invalid frame range"):
        read_samples(path, 10, 5)


def test_channels_are_selected_or_mixed(tmp_path):
    path = write_tone(tmp_path / "stereo.wav", RATE, 0.05, 40_000.0, channels=2)
    expected = tone(RATE, 0.05, 40_000.0, channels=2)
    for channel in (0, 1):
        samples = read_samples(path, channel=channel)
        np.testing.assert_allclose(samples, expected[:, channel], atol=2**-15)
    np.testing.assert_allclose(read_samples(path), expected.mean(axis=1), atol=2**-15)
    with pytest.raises(RecordingError, match=r"no channel 2 \(the recording has 2\)"):
        read_samples(path, channel=2)
    with pytest.raises(ValueError, match="index or 'mix'"):
        read_samples(path, channel="left")


@pytest.mark.parametrize(
    ("channels", "policy", "units"),
    [
        (1, "each", [0]),
        (1, "first", [0]),
        (1, "mix", [0]),
        (3, "each", [0, 1, 2]),
        (3, "first", [0]),
        (3, "mix", ["mix"]),
    ],
)
def test_channel_units_follow_the_policy(channels, policy, units):
    assert channel_units(channels, policy) == units


def test_channel_units_refuse_an_unknown_policy(tmp_path):
    info = read_info(write_tone(tmp_path / "tone.wav", RATE, 0.01, 40_000.0))
    with pytest.raises(ValueError, match="each, first, mix"):
        channel_units(info.channels, "left")


def test_guano_time_expansion_timestamp_and_recorder(corpus):
    info = read_info(corpus[0] / "guano_te10_50khz.wav")
    assert (info.sample_rate, info.time_expansion, info.real_rate) == (50_000, 10.0, 500_000.0)
    assert info.duration == pytest.approx(0.05)
    assert info.timestamp == "2024-06-01T22:15:30"
    assert info.recorder == "Pettersson D240X"
    assert info.guano["TE"] == "10" and info.guano["GUANO|Version"] == "1.0"
    assert info.note == ""
    check_usable(info, SETTINGS)


def test_time_expansion_override_wins_over_guano(corpus):
    path = corpus[0] / "guano_te10_50khz.wav"
    info = read_info(path, time_expansion=1)
    assert (info.time_expansion, info.real_rate) == (1.0, 50_000.0)
    assert info.guano["TE"] == "10"
    with pytest.raises(RecordingError, match="50000 Hz is too low.*minimum 96000 Hz.*--time-expansion"):
        check_usable(info, SETTINGS)
    assert read_info(path, time_expansion=20).real_rate == 1_000_000.0
    with pytest.raises(ValueError, match="must be > 0"):
        read_info(path, time_expansion=0)


def test_malformed_guano_is_noted_and_what_parses_is_kept(corpus):
    info = read_info(corpus[0] / "guano_malformed.wav")
    assert info.note.startswith("malformed GUANO ignored: ")
    for problem in ("not UTF-8", "1 unreadable line(s)", "TE 'ten'", "timestamp 'yesterday evening'"):
        assert problem in info.note
    assert (info.time_expansion, info.timestamp, info.recorder) == (1.0, None, "Pettersson")
    assert info.guano["Note"] == "caf\ufffd au lait"
    assert "\n" not in info.note


@pytest.mark.parametrize("te", [0, -5, "nan"])
def test_unusable_guano_time_expansion_is_noted_and_ignored(tmp_path, te):
    info = read_info(write_tone(tmp_path / "te.wav", RATE, 0.01, 40_000.0, guano={"TE": te}))
    assert info.time_expansion == 1.0
    assert f"TE '{te}' is not a positive number" in info.note


@pytest.mark.parametrize("name", ["guano_odd_data_padded.wav", "guano_odd_data_unpadded.wav"])
def test_guano_is_found_after_odd_sized_data_with_or_without_its_pad_byte(corpus, name):
    info = read_info(corpus[0] / name)
    assert info.frames % 2 == 1
    assert info.recorder == "Pettersson D240X"


def test_missing_file_directory_and_special_file_are_refused(tmp_path):
    with pytest.raises(RecordingError, match="no such file"):
        read_info(tmp_path / "missing.wav")
    with pytest.raises(RecordingError, match="no such file"):
        read_samples(tmp_path / "missing.wav")
    with pytest.raises(RecordingError, match="is a directory"):
        read_info(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.wav")
        with pytest.raises(RecordingError, match="not a regular file"):
            read_info(tmp_path / "pipe.wav")


def test_read_info_never_decodes_samples(corpus, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("read_info decoded samples")

    monkeypatch.setattr(soundfile.SoundFile, "read", refuse)
    for name in ("guano_te10_50khz.wav", "float_nan.wav", "claims_gigabytes.wav"):
        assert read_info(corpus[0] / name).frames > 0


def test_file_status_is_what_read_info_says(tmp_path):
    path = write_tone(tmp_path / "tone.wav", RATE, 0.01, 40_000.0)
    info = read_info(path)
    assert file_status(path) == (info.size, info.mtime) == (path.stat().st_size, path.stat().st_mtime)
    with pytest.raises(RecordingError, match="no such file"):
        file_status(tmp_path / "missing.wav")


def test_any_damage_to_a_file_gives_a_recording_error_or_a_usable_read(corpus):
    """Every cut of the first bytes and of the GUANO chunk, and random byte changes in them."""
    folder = corpus[0]
    original = (folder / "guano_te10_50khz.wav").read_bytes()
    rng = np.random.default_rng(0)
    damaged = [original[:n] for n in [*range(120), *range(len(original) - 150, len(original))]]
    for _ in range(200):
        copy = bytearray(original)
        first = 0 if rng.random() < 0.5 else len(copy) - 150
        for where in rng.integers(first, first + 60, size=3):
            copy[where] = rng.integers(0, 256)
        damaged.append(bytes(copy))
    path = folder / "damaged.wav"
    try:
        for data in damaged:
            path.write_bytes(data)
            try:
                info = read_info(path)
                assert read_samples(path, 0, min(info.frames, 1000)).dtype == np.float32
            except RecordingError as exc:
                assert "\n" not in str(exc)
    finally:
        path.unlink()


def test_too_short_is_the_shortest_length_with_one_spectrogram_column(tmp_path):
    shortest = next(n for n in range(1, RATE) if SETTINGS.n_columns(n, RATE) > 0)
    long_enough = read_info(write_tone(tmp_path / "long.wav", RATE, shortest / RATE, 40_000.0))
    check_usable(long_enough, SETTINGS)
    too_short = read_info(write_tone(tmp_path / "short.wav", RATE, (shortest - 1) / RATE, 40_000.0))
    minimum_ms = 1e3 * shortest / RATE
    with pytest.raises(RecordingError, match=f"too short .*needs {minimum_ms:.3g} ms"):
        check_usable(too_short, SETTINGS)


def test_info_describes_the_file(tmp_path):
    path = write_tone(tmp_path / "tone.wav", RATE, 0.05, 40_000.0, channels=2, subtype="PCM_24")
    info = read_info(path)
    assert info.path == str(path)
    assert (info.size, info.mtime) == (path.stat().st_size, path.stat().st_mtime)
    assert (info.sample_rate, info.frames, info.channels, info.subtype) == (RATE, 19_200, 2, "PCM_24")
    assert (info.time_expansion, info.timestamp, info.recorder) == (1.0, None, None)
    assert (info.guano, info.note) == ({}, "")
    assert info.duration == pytest.approx(0.05)


def test_fsspec_memory_filesystem_reads_headers_guano_and_samples(corpus):
    fs = fsspec.filesystem("memory")
    local = corpus[0] / "guano_te10_50khz.wav"
    fs.pipe("/audio-test/te10.wav", local.read_bytes())
    try:
        for path, filesystem in [("memory://audio-test/te10.wav", None), ("/audio-test/te10.wav", fs)]:
            info = read_info(path, filesystem=filesystem)
            assert info.path == path
            assert (info.real_rate, info.timestamp) == (500_000.0, "2024-06-01T22:15:30")
            assert info.size == local.stat().st_size
            assert info.mtime > 0
            np.testing.assert_array_equal(
                read_samples(path, 100, 900, filesystem=filesystem), read_samples(local, 100, 900)
            )
        with pytest.raises(RecordingError, match="no such file"):
            read_info("memory://audio-test/missing.wav")
        with pytest.raises(RecordingError, match="is a directory"):
            read_info("memory://audio-test")
    finally:
        fs.rm("/audio-test", recursive=True)


REAL_RECORDINGS = {
    "annotated/audio/20170701_213954-MYOMYS-LR_0_0.5.wav": (500_000, 0.5),
    "annotated/audio/20180530_213516-EPTSER-LR_0_0.5.wav": (384_000, 0.5),
    "annotated/audio/20180627_215323-RHIFER-LR_0_0.5.wav": (384_000, 0.5),
    "unannotated/0166_20240531_223911.wav": (312_500, 4.03),
    "unannotated/0166_20240602_225340.wav": (312_500, 4.03),
    "unannotated/0166_20240603_033731.wav": (312_500, 4.03),
    "unannotated/0166_20240603_033937.wav": (312_500, 4.03),
    "unannotated/0166_20240604_233500.wav": (312_500, 4.03),
    "unannotated/Audiomoth.WAV": (250_000, 6.73),
    "unannotated/AudiomothNoBatCalls.WAV": (250_000, 0.105),
    "unannotated/Echometer.wav": (256_000, 6.98),
    "unannotated/20230322_172000_selec2.wav": (192_000, 2.0),
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(REAL_RECORDINGS))
def test_real_recordings_have_the_documented_rate_and_length_and_are_usable(real_data, name):
    rate, seconds = REAL_RECORDINGS[name]
    info = read_info(real_data / name)
    assert (info.sample_rate, info.channels, info.time_expansion) == (rate, 1, 1.0)
    assert info.duration == pytest.approx(seconds, abs=0.01)
    assert info.note == ""
    check_usable(info, SETTINGS)


@pytest.mark.realdata
def test_real_guano_gives_recorder_and_timestamp(real_data):
    audiomoth = read_info(real_data / "unannotated" / "Audiomoth.WAV")
    assert audiomoth.recorder == "Open Acoustic Devices AudioMoth"
    assert audiomoth.timestamp == "2024-09-03T20:26:15+01:00"
    batlogger = read_info(real_data / "unannotated" / "0166_20240531_223911.wav")
    assert (batlogger.recorder, batlogger.timestamp) == ("BATLOGGER S2", "2024-05-31T22:39:11")
    assert batlogger.guano["Loc Position"] == "49.093119 5.047867"


@pytest.mark.realdata
def test_real_recording_streams_in_blocks_equal_to_the_whole(real_data):
    path = real_data / "unannotated" / "Echometer.wav"
    whole = read_samples(path)
    assert whole.shape == (read_info(path).frames,)
    block = 400_000
    starts = range(0, len(whole), block)
    blocks = [read_samples(path, start, min(start + block, len(whole))) for start in starts]
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    assert 0 < np.abs(whole).max() <= 1
