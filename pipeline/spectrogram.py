"""The reference system's spectrogram features, as pure functions of (samples, rate, settings).

From samples to the model-ready spectrogram, in the reference system's order:

1. :func:`frame_power` - Hann-windowed frames of ``window_s`` with ``overlap``, power
   spectrum, FFT bins ``min_bin..max_bin`` kept (zero where above Nyquist);
2. :func:`log_scale` - ``log(1 + 2 / (rate * sum(hann**2)) * power)``, ``rate`` the real rate
   divided by ``log_scale_expansion`` (1 by default; the reference system's networks need 10);
3. :func:`denoise` - frames whose mean log-magnitude exceeds ``active_threshold`` are
   "active"; the per-frequency mean is subtracted separately over active and inactive
   frames (:class:`DenoiseStatistics`), then clipped at 0;
4. :func:`smooth` - Gaussian smoothing of ``smoothing_sigma`` frames and bins;
5. :func:`zoom_out` - block means of ``zoom`` x ``zoom``: 130 rows, one column per two frames.

Steps 4 and 5 run as one compiled pass, :func:`smooth_and_zoom` (:func:`smooth` and
:func:`zoom_out` remain as its readable reference), and the loops of steps 1 and 3 are
compiled too (:mod:`pipeline.spectrogram_kernels`), equal to the numpy expressions in their
docstrings up to float32 rounding.

Arrays are ``(time, frequency)``: one row per frame (or column), lowest frequency first.

The denoising means are statistics of the whole recording, so a long recording is processed
in two streaming passes: :func:`recording_statistics` accumulates them block by block, then
:func:`spectrogram_columns` computes any range of columns with a halo wide enough for the
smoothing. The result equals that of :func:`spectrogram` on the whole recording (up to
float32 rounding), which is what lets the cube be built from chunks in parallel.

Difference from the reference system, on purpose: the reference system zoomed every 260x40 patch separately with a
spline, so each frame stored its own 2,600 values; here the whole spectrogram is zoomed once
by block averaging, and a model window is a slice of 20 consecutive columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.fft
from scipy import ndimage

from pipeline import spectrogram_kernels as _kernels
from pipeline.config import SpectrogramSettings

#: Frames transformed at once: the windowed frames and their spectrum (~2.4 MB each at
#: 500 kHz) stay in cache; 512 is 10-15 % faster than 2048 at 250-500 kHz.
_FRAMES_PER_BLOCK = 512

#: Samples in [-1, 1] are scaled to 16-bit integer units, as the reference system read them, so that the
#: log scaling and the activity threshold mean what they meant there, whatever the bit depth.
INT16_SCALE = 32768.0

#: Gaussian kernels are truncated at this many standard deviations (scipy's default).
_TRUNCATE = 4.0

SampleReader = Callable[[int, int], np.ndarray]
"""``read(start, stop)`` returns float32 samples ``[start, stop)`` of one recording."""


def smoothing_radius(settings: SpectrogramSettings) -> int:
    """Frames on each side that the Gaussian smoothing reaches."""
    return int(_TRUNCATE * settings.smoothing_sigma + 0.5)


def gaussian_kernel(settings: SpectrogramSettings) -> np.ndarray:
    """The normalised Gaussian weights of :func:`smooth`, as scipy.ndimage builds them.

    Returns
    -------
    float64 array of ``2 * smoothing_radius(settings) + 1`` taps (``[1.0]`` when the
    radius is 0, that is when there is no smoothing).
    """
    radius = smoothing_radius(settings)
    if radius == 0:
        return np.ones(1)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / settings.smoothing_sigma**2 * x**2)
    return weights / weights.sum()


def frame_power(samples: np.ndarray, real_rate: float, settings: SpectrogramSettings) -> np.ndarray:
    """Power spectrum of every complete frame, bins ``min_bin..max_bin``.

    Parameters
    ----------
    samples : 1-D array
        Real-time samples (any float or int dtype; computed in float32).
    real_rate : float
        Sample rate in real time (header rate times the time-expansion factor), Hz.
    settings : SpectrogramSettings

    Returns
    -------
    float32 array of shape ``(n_frames, settings.n_bins)``.
    """
    nfft, hop = settings.nfft(real_rate), settings.hop(real_rate)
    n_frames = settings.n_frames(len(samples), real_rate)
    out = np.zeros((n_frames, settings.n_bins), dtype=np.float32)
    if n_frames == 0:
        return out
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(samples, nfft)[::hop]
    window = (np.hanning(nfft) * INT16_SCALE).astype(np.float32)
    top = min(settings.max_bin, nfft // 2)  # bins above Nyquist stay zero
    n_kept = top - settings.min_bin + 1
    if n_kept <= 0:
        return out
    block = np.empty((min(_FRAMES_PER_BLOCK, n_frames), nfft), dtype=np.float32)
    for first in range(0, n_frames, _FRAMES_PER_BLOCK):
        stop = min(first + _FRAMES_PER_BLOCK, n_frames)
        windowed = np.multiply(frames[first:stop], window, out=block[: stop - first])
        spectrum = scipy.fft.rfft(windowed, axis=1)
        # out[first:stop, :n_kept] = |spectrum[:, min_bin : top + 1]| ** 2
        _kernels.power_of_bins(spectrum.view(np.float32), settings.min_bin, out[first:stop, :n_kept])
    return out


def log_scale(
    power: np.ndarray, real_rate: float, settings: SpectrogramSettings, *, overwrite: bool = False
) -> np.ndarray:
    """The reference system's log compression of a power spectrogram (float32).

    The rate in the scaling is ``real_rate / settings.log_scale_expansion``. With
    ``overwrite``, a float32 ``power`` is replaced by the result (saves a copy).
    """
    window = np.hanning(settings.nfft(real_rate))
    rate = real_rate / settings.log_scale_expansion
    scale = np.float32(2.0 / (rate * np.sum(window**2)))
    out = power if overwrite and power.dtype == np.float32 else None
    scaled = np.multiply(power, scale, out=out, dtype=np.float32)
    return np.log1p(scaled, out=scaled)


def log_spectrogram(samples: np.ndarray, real_rate: float, settings: SpectrogramSettings) -> np.ndarray:
    """:func:`frame_power` then :func:`log_scale`: ``(n_frames, n_bins)`` float32."""
    power = frame_power(samples, real_rate, settings)
    return log_scale(power, real_rate, settings, overwrite=True)


@dataclass(frozen=True)
class DenoiseStatistics:
    """Per-frequency sums over the active and inactive frames of a recording.

    Sums (not means) so that statistics of consecutive blocks add up to those of the whole.
    """

    active_sum: np.ndarray
    active_count: int
    inactive_sum: np.ndarray
    inactive_count: int

    def __add__(self, other: "DenoiseStatistics") -> "DenoiseStatistics":
        return DenoiseStatistics(
            self.active_sum + other.active_sum,
            self.active_count + other.active_count,
            self.inactive_sum + other.inactive_sum,
            self.inactive_count + other.inactive_count,
        )

    @property
    def active_mean(self) -> np.ndarray:
        return (self.active_sum / max(self.active_count, 1)).astype(np.float32)

    @property
    def inactive_mean(self) -> np.ndarray:
        return (self.inactive_sum / max(self.inactive_count, 1)).astype(np.float32)

    @classmethod
    def empty(cls, n_bins: int) -> "DenoiseStatistics":
        zeros = np.zeros(n_bins, dtype=np.float64)
        return cls(zeros, 0, zeros.copy(), 0)


def active_frames(log_spec: np.ndarray, settings: SpectrogramSettings) -> np.ndarray:
    """Boolean mask of the frames whose mean log-magnitude exceeds the threshold."""
    return log_spec.sum(axis=1) > settings.active_threshold * log_spec.shape[1]


def _flags(active: np.ndarray) -> np.ndarray:
    """A boolean frame mask as the contiguous uint8 flags the kernels take (no copy if possible)."""
    return np.ascontiguousarray(active, dtype=bool).view(np.uint8)


def denoise_statistics(
    log_spec: np.ndarray, settings: SpectrogramSettings, active: np.ndarray | None = None
) -> DenoiseStatistics:
    """The :class:`DenoiseStatistics` of a block of log-spectrogram frames.

    The sums are ``log_spec[active].sum(axis=0, dtype=np.float64)`` and the same over
    ``~active``, computed in one pass without copying the frames.
    """
    if active is None:
        active = active_frames(log_spec, settings)
    flags = _flags(active)
    active_sum, inactive_sum = _kernels.class_sums(np.ascontiguousarray(log_spec, dtype=np.float32), flags)
    n_active = int(np.count_nonzero(flags))
    return DenoiseStatistics(
        active_sum=active_sum,
        active_count=n_active,
        inactive_sum=inactive_sum,
        inactive_count=len(flags) - n_active,
    )


def denoise(
    log_spec: np.ndarray,
    stats: DenoiseStatistics,
    settings: SpectrogramSettings,
    active: np.ndarray | None = None,
    *,
    overwrite: bool = False,
) -> np.ndarray:
    """Subtract the recording's per-frequency means (active or inactive), clip at 0.

    That is ``np.maximum(log_spec - mean, 0)``, where ``mean`` is ``stats.active_mean`` for
    the active frames and ``stats.inactive_mean`` for the others. With ``overwrite``, a
    C-contiguous float32 ``log_spec`` is replaced by the result (saves a copy).
    """
    if active is None:
        active = active_frames(log_spec, settings)
    if overwrite and log_spec.dtype == np.float32 and log_spec.flags.c_contiguous:
        out = log_spec
    else:
        out = np.array(log_spec, dtype=np.float32, order="C")
    _kernels.subtract_class_means(out, _flags(active), stats.active_mean, stats.inactive_mean)
    return out


def smooth(spec: np.ndarray, settings: SpectrogramSettings) -> np.ndarray:
    """Gaussian smoothing along time and frequency (reflecting at the edges).

    The readable reference of the smoothing inside :func:`smooth_and_zoom`.
    """
    if settings.smoothing_sigma == 0:
        return spec
    return ndimage.gaussian_filter(
        spec, settings.smoothing_sigma, mode="reflect", truncate=_TRUNCATE, output=np.float32
    )


def zoom_out(spec: np.ndarray, factor: int) -> np.ndarray:
    """Block means of ``factor`` x ``factor``; a trailing partial block of frames is dropped."""
    n_columns = spec.shape[0] // factor
    n_rows = spec.shape[1] // factor
    out = np.zeros((n_columns, n_rows), dtype=np.float32)
    for i in range(factor):
        for j in range(factor):
            out += spec[i : n_columns * factor : factor, j : n_rows * factor : factor]
    out *= np.float32(1.0 / factor**2)
    return out


def smooth_and_zoom(
    spec: np.ndarray, settings: SpectrogramSettings, first: int = 0, n_columns: int | None = None
) -> np.ndarray:
    """:func:`smooth` then :func:`zoom_out` in one compiled pass, on a range of frames.

    By linearity, the Gaussian smoothing followed by the ``zoom``-frame (and ``zoom``-bin)
    mean is a single correlation with the Gaussian kernel convolved with a box of ``zoom``
    taps (divided by ``zoom``), evaluated at every ``zoom``-th frame and bin only.

    Parameters
    ----------
    spec : float32 array ``(n_frames, n_bins)``
        Denoised log-spectrogram; the smoothing reflects at its first and last frame, as
        :func:`smooth` does.
    settings : SpectrogramSettings
    first : int
        First frame of the first output column.
    n_columns : int, optional
        Output columns (frames ``[first, first + zoom * n_columns)``); by default as many
        as fit after ``first``.

    Returns
    -------
    float32 array ``(n_columns, n_bins // zoom)``, equal up to float32 rounding to
    ``zoom_out(smooth(spec, settings)[first : first + zoom * n_columns], zoom)``.
    """
    zoom = settings.zoom
    if n_columns is None:
        n_columns = max(len(spec) - first, 0) // zoom
    weights = np.convolve(gaussian_kernel(settings), np.ones(zoom) / zoom).astype(np.float32)
    return _kernels.smooth_zoom(np.ascontiguousarray(spec, dtype=np.float32), weights, zoom, first, n_columns)


def spectrogram(samples: np.ndarray, real_rate: float, settings: SpectrogramSettings) -> np.ndarray:
    """Model-ready spectrogram of a whole recording, ``(n_columns, n_rows)`` float32."""
    log_spec = log_spectrogram(samples, real_rate, settings)
    active = active_frames(log_spec, settings)
    stats = denoise_statistics(log_spec, settings, active)
    return smooth_and_zoom(denoise(log_spec, stats, settings, active, overwrite=True), settings)


# --- streaming: any range of columns of a recording that does not fit in memory -----------


def _frame_samples(first_frame: int, stop_frame: int, real_rate: float, settings: SpectrogramSettings):
    """The sample range holding frames ``[first_frame, stop_frame)``."""
    nfft, hop = settings.nfft(real_rate), settings.hop(real_rate)
    return first_frame * hop, (stop_frame - 1) * hop + nfft


def _log_frames(read: SampleReader, first: int, stop: int, real_rate: float, settings: SpectrogramSettings):
    start, end = _frame_samples(first, stop, real_rate, settings)
    return log_spectrogram(read(start, end), real_rate, settings)


def recording_statistics(
    read: SampleReader,
    n_samples: int,
    real_rate: float,
    settings: SpectrogramSettings,
    *,
    block_frames: int = 65_536,
) -> DenoiseStatistics:
    """Denoising statistics of a whole recording, reading it in blocks of frames."""
    n_frames = settings.n_frames(n_samples, real_rate)
    stats = DenoiseStatistics.empty(settings.n_bins)
    for first in range(0, n_frames, block_frames):
        stop = min(first + block_frames, n_frames)
        stats = stats + denoise_statistics(_log_frames(read, first, stop, real_rate, settings), settings)
    return stats


def spectrogram_columns(
    read: SampleReader,
    n_samples: int,
    real_rate: float,
    settings: SpectrogramSettings,
    start: int,
    stop: int,
    stats: DenoiseStatistics,
) -> np.ndarray:
    """Columns ``[start, stop)`` of the model-ready spectrogram of a recording.

    Reads only the samples those columns need, plus a halo of :func:`smoothing_radius`
    frames on each side (where the recording has them), so that the result equals the
    same columns of :func:`spectrogram` on the whole recording.

    Parameters
    ----------
    read : callable ``(start, stop) -> float32 samples``
    n_samples : samples in the recording
    real_rate : real-time sample rate (Hz)
    settings : SpectrogramSettings
    start, stop : column range, ``0 <= start <= stop <= settings.n_columns(n_samples, real_rate)``
    stats : the recording's :class:`DenoiseStatistics` (from :func:`recording_statistics`)
    """
    n_frames = settings.n_frames(n_samples, real_rate)
    n_columns = n_frames // settings.zoom
    if not 0 <= start <= stop <= n_columns:
        raise ValueError(f"columns [{start}, {stop}) outside [0, {n_columns})")
    if start == stop:
        return np.zeros((0, settings.n_rows), dtype=np.float32)
    radius = smoothing_radius(settings)
    first, last = start * settings.zoom, stop * settings.zoom
    lo, hi = max(0, first - radius), min(n_frames, last + radius)
    log_spec = _log_frames(read, lo, hi, real_rate, settings)
    denoised = denoise(log_spec, stats, settings, overwrite=True)
    return smooth_and_zoom(denoised, settings, first - lo, stop - start)


def column_times(n_columns: int, real_rate: float, settings: SpectrogramSettings) -> np.ndarray:
    """Real-time start (s) of each model-ready column of a recording (float64)."""
    return np.arange(n_columns, dtype=np.float64) * settings.column_step_s(real_rate)
