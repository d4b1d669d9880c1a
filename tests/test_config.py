import pytest

from pipeline.config import IngestSettings, Settings, SettingsError, SpectrogramSettings


def test_defaults_are_the_seeds():
    s = SpectrogramSettings()
    assert (s.n_bins, s.n_rows) == (260, 130)
    assert s.nfft(500_000) == 1161
    assert abs(s.hop(500_000) / 500_000 - 0.00058) < 1e-5


def test_fingerprint_is_stable_and_sensitive():
    a, b = SpectrogramSettings(), SpectrogramSettings()
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 16
    assert a.fingerprint() != a.replace(smoothing_sigma=2.0).fingerprint()
    assert a.fingerprint() != IngestSettings().fingerprint()


def test_toml_file_overrides(tmp_path):
    f = tmp_path / "batml.toml"
    f.write_text('[spectrogram]\nsmoothing_sigma = 2\n[ingest]\nchannels = "mix"\n')
    s = Settings.load(f)
    assert s.spectrogram.smoothing_sigma == 2.0 and s.ingest.channels == "mix"
    assert s.spectrogram.window_s == SpectrogramSettings().window_s


@pytest.mark.parametrize(
    "text, message",
    [
        ("[spectrogram]\nwindw_s = 1\n", "unknown setting"),
        ("[spectrogam]\n", "unknown section"),
        ("[spectrogram]\nzoom = 'x'\n", "not a valid int"),
        ("[spectrogram]\noverlap = 1.5\n", "overlap"),
        ("[ingest]\nchannels = 'left'\n", "channels"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_settings_give_one_line(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(SettingsError, match=message) as info:
        Settings.load(f)
    assert str(f) in str(info.value) and "\n" not in str(info.value)


def test_missing_file():
    with pytest.raises(SettingsError, match="not found"):
        Settings.load("/nonexistent/batml.toml")
