import numpy as np
import pytest
from scipy import ndimage

from pipeline import spectrogram as sg
from pipeline.config import SpectrogramSettings

SETTINGS = SpectrogramSettings()
RATES = [192_000, 250_000, 256_000, 384_000, 500_000]


def noisy_recording(rate, seconds=1.0, seed=0, calls=((0.2, 45_000.0),), burst=None):
    """White noise with short tonal 'calls' (start s, frequency Hz) in [-1, 1] floats, and an
    optional loud broadband ``burst`` (start s, stop s) that makes frames "active"."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.002, int(rate * seconds)).astype(np.float32)
    if burst is not None:
        a, b = int(burst[0] * rate), int(burst[1] * rate)
        x[a:b] += rng.normal(0, 0.3, b - a).astype(np.float32)
    n = int(0.004 * rate)
    t = np.arange(n) / rate
    for start, freq in calls:
        i = int(start * rate)
        if i + n > len(x):
            continue
        x[i : i + n] += (0.3 * np.hanning(n) * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x


def naive_seed_features(x, rate):
    """A literal, loop-based restatement of the reference system's recipe (SEED.md), in float64."""
    nfft = int(0.002322 * rate)
    step = nfft - int(0.75 * nfft)
    window = np.hanning(nfft)
    frames = []
    i = 0
    while i + nfft <= len(x):
        power = np.abs(np.fft.rfft(x[i : i + nfft] * 32768.0 * window)) ** 2
        kept = np.zeros(260)
        available = power[11:271]
        kept[: len(available)] = available
        frames.append(kept)
        i += step
    spec = np.log(1 + 2.0 / (rate * np.sum(window**2)) * np.array(frames))
    active = spec.mean(axis=1) > 0.5
    out = spec.copy()
    for mask in (active, ~active):
        if mask.any():
            out[mask] = spec[mask] - spec[mask].mean(axis=0)
    out = ndimage.gaussian_filter(np.clip(out, 0, None), 1.0)
    n_cols = len(out) // 2
    return out[: 2 * n_cols].reshape(n_cols, 2, 130, 2).mean(axis=(1, 3))


@pytest.mark.parametrize("rate", [192_000, 384_000, 500_000])
def test_matches_a_literal_restatement_of_the_seed_recipe(rate):
    x = noisy_recording(rate, 0.3, burst=(0.1, 0.15))
    ours = sg.spectrogram(x, rate, SETTINGS)
    reference = naive_seed_features(x.astype(np.float64), rate)
    assert ours.shape == reference.shape == (SETTINGS.n_columns(len(x), rate), 130)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3 * reference.max())


@pytest.mark.parametrize("rate", RATES)
def test_chunked_columns_equal_the_whole_recording(rate):
    x = noisy_recording(rate, 1.3, calls=((0.1, 40_000.0), (0.5, 80_000.0), (0.9, 25_000.0)), burst=(0.6, 0.7))
    whole = sg.spectrogram(x, rate, SETTINGS)
    read = lambda a, b: x[a:b]  # noqa: E731
    stats = sg.recording_statistics(read, len(x), rate, SETTINGS, block_frames=997)
    bounds = [0, 1, 7, 300, 301, 555, len(whole) - 3, len(whole)]
    parts = [sg.spectrogram_columns(read, len(x), rate, SETTINGS, a, b, stats) for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-5, atol=1e-5)


def test_streamed_statistics_add_up_to_the_whole():
    rate = 384_000
    x = noisy_recording(rate, 0.8, burst=(0.3, 0.4))
    log_spec = sg.log_spectrogram(x, rate, SETTINGS)
    whole = sg.denoise_statistics(log_spec, SETTINGS)
    streamed = sg.recording_statistics(lambda a, b: x[a:b], len(x), rate, SETTINGS, block_frames=101)
    assert streamed.active_count == whole.active_count > 0
    assert streamed.inactive_count == whole.inactive_count > 0
    np.testing.assert_allclose(streamed.active_mean, whole.active_mean, rtol=1e-6)
    np.testing.assert_allclose(streamed.inactive_mean, whole.inactive_mean, rtol=1e-6)


def test_columns_out_of_range_are_refused():
    x = noisy_recording(250_000, 0.1)
    stats = sg.DenoiseStatistics.empty(SETTINGS.n_bins)
    n = SETTINGS.n_columns(len(x), 250_000)
    with pytest.raises(ValueError, match="outside"):
        sg.spectrogram_columns(lambda a, b: x[a:b], len(x), 250_000, SETTINGS, 0, n + 1, stats)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("freq", [20_000.0, 45_000.0, 90_000.0])
def test_a_call_appears_at_its_frequency_and_time(rate, freq):
    x = noisy_recording(rate, 0.5, calls=((0.25, freq),))
    spec = sg.spectrogram(x, rate, SETTINGS)
    col, row = np.unravel_index(np.argmax(spec), spec.shape)
    freqs = np.asarray(SETTINGS.frequencies())
    assert abs(freqs[row] - freq) <= 2 * (freqs[1] - freqs[0])
    times = sg.column_times(len(spec), rate, SETTINGS)
    assert 0.25 <= times[col] <= 0.25 + 0.004


def test_rows_above_nyquist_are_zero_at_low_rates():
    rate = 192_000
    spec = sg.spectrogram(noisy_recording(rate, 0.3), rate, SETTINGS)
    freqs = np.asarray(SETTINGS.frequencies())
    # above Nyquist (plus the smoothing's reach of one row) nothing may appear
    assert np.all(spec[:, freqs > rate / 2 + 2 * (freqs[1] - freqs[0])] == 0)
    assert spec[:, freqs < 60_000].max() > 0


def test_denoising_removes_a_constant_tone_but_keeps_a_call():
    rate = 384_000
    x = noisy_recording(rate, 1.0, calls=((0.5, 50_000.0),))
    t = np.arange(len(x)) / rate
    x = x + (0.01 * np.sin(2 * np.pi * 30_000 * t)).astype(np.float32)  # insect-like band
    spec = sg.spectrogram(x, rate, SETTINGS)
    freqs = np.asarray(SETTINGS.frequencies())
    tone_row = np.argmin(abs(freqs - 30_000))
    call_row = np.argmin(abs(freqs - 50_000))
    assert spec[:, call_row].max() > 5 * np.median(spec[:, tone_row]) + 1e-3


def test_too_short_recording_has_no_columns():
    rate = 384_000
    x = np.zeros(SETTINGS.nfft(rate) - 1, np.float32)
    assert sg.spectrogram(x, rate, SETTINGS).shape == (0, 130)
    assert SETTINGS.n_columns(len(x), rate) == 0


def test_frame_count_matches_the_seed_rate():
    # about 1723 frames per second whatever the rate (frame step 0.58 ms)
    for rate in RATES:
        frames_per_second = SETTINGS.n_frames(rate * 10, rate) / 10
        assert 1700 < frames_per_second < 1740


# --- the compiled kernels equal their readable numpy references ------------------------------


@pytest.mark.parametrize("sigma", [0.0, 0.3, 1.0, 2.0])
@pytest.mark.parametrize("zoom", [1, 2, 3])
@pytest.mark.parametrize("n_frames", [0, 1, 2, 3, 5, 8, 9, 33, 100, 101])
def test_smooth_and_zoom_equals_zoom_out_of_smooth(sigma, zoom, n_frames):
    settings = SpectrogramSettings(smoothing_sigma=sigma, zoom=zoom)
    rng = np.random.default_rng(n_frames)
    # frames shorter than the radius, odd counts (a trailing frame that only the smoothing
    # of its neighbour uses), bins not divisible by zoom and the real 260
    for n_bins in (1, 2, 5, 7, 260):
        spec = np.maximum(rng.normal(0, 1, (n_frames, n_bins)), 0).astype(np.float32)  # like denoised
        reference = sg.zoom_out(sg.smooth(spec, settings), zoom)
        fused = sg.smooth_and_zoom(spec, settings)
        assert fused.shape == reference.shape == (n_frames // zoom, n_bins // zoom)
        assert fused.dtype == np.float32
        np.testing.assert_allclose(fused, reference, rtol=2e-6, atol=0)


@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("zoom", [1, 2])
def test_smooth_and_zoom_of_a_range_of_frames(sigma, zoom):
    settings = SpectrogramSettings(smoothing_sigma=sigma, zoom=zoom)
    spec = np.random.default_rng(1).random((41, 260), dtype=np.float32)
    smoothed = sg.smooth(spec, settings)
    for first, n_columns in [(0, 0), (0, 3), (1, 5), (7, 10), (41 - 3 * zoom, 3), (40, 0)]:
        reference = sg.zoom_out(smoothed[first : first + zoom * n_columns], zoom)
        fused = sg.smooth_and_zoom(spec, settings, first, n_columns)
        np.testing.assert_allclose(fused, reference, rtol=2e-6, atol=0)
    with pytest.raises(ValueError, match="outside"):
        sg.smooth_and_zoom(spec, settings, 42 - zoom, 1)
    with pytest.raises(ValueError, match="outside"):
        sg.smooth_and_zoom(spec, settings, -1, 1)


def test_gaussian_kernel_is_scipys():
    for sigma in (0.5, 1.0, 2.0, 3.3):
        settings = SpectrogramSettings(smoothing_sigma=sigma)
        impulse = np.zeros(101)
        impulse[50] = 1.0
        radius = sg.smoothing_radius(settings)
        scipy_weights = ndimage.gaussian_filter1d(impulse, sigma, mode="constant", truncate=4.0)
        np.testing.assert_allclose(sg.gaussian_kernel(settings), scipy_weights[50 - radius : 51 + radius], rtol=1e-12)
    assert sg.gaussian_kernel(SpectrogramSettings(smoothing_sigma=0.0)).tolist() == [1.0]


@pytest.mark.parametrize("rate", [192_000, 500_000])
def test_frame_power_is_the_windowed_power_spectrum(rate):
    x = noisy_recording(rate, 0.05)
    nfft, hop = SETTINGS.nfft(rate), SETTINGS.hop(rate)
    n_frames = SETTINGS.n_frames(len(x), rate)
    frames = np.stack([x[i * hop : i * hop + nfft] for i in range(n_frames)]).astype(np.float64)
    spectrum = np.fft.rfft(frames * np.hanning(nfft) * sg.INT16_SCALE, axis=1)[:, 11:271]
    expected = np.zeros((n_frames, 260))
    expected[:, : spectrum.shape[1]] = np.abs(spectrum) ** 2
    power = sg.frame_power(x, rate, SETTINGS)
    assert power.dtype == np.float32
    np.testing.assert_allclose(power, expected, rtol=1e-3, atol=1e-4 * expected.max())
    if rate < 2 * 270 / SETTINGS.window_s:
        assert np.all(power[:, spectrum.shape[1] :] == 0)


def test_denoising_kernels_equal_numpy():
    rng = np.random.default_rng(2)
    log_spec = rng.gamma(1.0, 0.5, (500, 260)).astype(np.float32)
    active = sg.active_frames(log_spec, SETTINGS)
    assert 0 < active.sum() < len(active)
    stats = sg.denoise_statistics(log_spec, SETTINGS, active)
    np.testing.assert_array_equal(stats.active_sum, log_spec[active].sum(axis=0, dtype=np.float64))
    np.testing.assert_array_equal(stats.inactive_sum, log_spec[~active].sum(axis=0, dtype=np.float64))
    assert (stats.active_count, stats.inactive_count) == (active.sum(), (~active).sum())

    expected = np.where(active[:, None], log_spec - stats.active_mean, log_spec - stats.inactive_mean)
    expected = np.maximum(expected, 0)
    original = log_spec.copy()
    np.testing.assert_array_equal(sg.denoise(log_spec, stats, SETTINGS), expected)
    np.testing.assert_array_equal(log_spec, original)  # untouched without overwrite
    np.testing.assert_array_equal(sg.denoise(log_spec[::2], stats, SETTINGS), expected[::2])  # any strides
    out = sg.denoise(log_spec, stats, SETTINGS, overwrite=True)
    assert out is log_spec
    np.testing.assert_array_equal(out, expected)


def test_log_scale_overwrites_only_when_asked():
    power = np.random.default_rng(3).random((10, 260), dtype=np.float32) * 1e6
    original = power.copy()
    expected = sg.log_scale(power, 384_000, SETTINGS)
    np.testing.assert_array_equal(power, original)
    out = sg.log_scale(power, 384_000, SETTINGS, overwrite=True)
    assert out is power
    np.testing.assert_array_equal(out, expected)
