# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of :mod:`pipeline.spectrogram` (one core each, GIL released).

:func:`smooth_zoom` is Gaussian smoothing followed by the ``zoom x zoom`` block mean in a
single pass. By linearity, smoothing with a kernel ``g`` (``2 * radius + 1`` taps) then
averaging ``zoom`` consecutive values is one correlation with ``h``, the convolution of ``g``
with ``zoom`` ones, divided by ``zoom`` (``2 * radius + zoom`` taps), kept at every
``zoom``-th position. Each output column is one short weighted sum of frames along time
(contiguous frequency bins in the inner loop, which the C compiler vectorises), then the
same along frequency within that column. Edges follow scipy.ndimage's ``mode="reflect"``
(half-sample symmetric, repeated for lines shorter than the kernel). Arithmetic is float32
(scipy's is float64 with a float32 result per axis): results agree to about 1e-6 relative.

:func:`power_of_bins` is ``|spectrum[:, first_bin:first_bin + n]| ** 2`` in one pass;
:func:`class_sums` and :func:`subtract_class_means` are the two passes of the denoising
(per-frequency sums of the active and inactive frames; subtraction of their means, in place).
"""

import numpy as np


cdef inline Py_ssize_t _reflect(Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Index that position ``i`` reads in the ``mode="reflect"`` extension of a line of ``n``.

    The extension is periodic with period ``2 n``: ``... c b a | a b c | c b a | a b c ...``.
    """
    if 0 <= i < n:
        return i
    cdef Py_ssize_t period = 2 * n
    i = i % period
    if i < 0:
        i += period
    if i >= n:
        i = period - 1 - i
    return i


def smooth_zoom(
    const float[:, ::1] spec,
    const float[::1] weights,
    Py_ssize_t zoom,
    Py_ssize_t first,
    Py_ssize_t n_columns,
):
    """Separable correlation with ``weights`` along both axes, kept every ``zoom`` positions.

    Parameters
    ----------
    spec : float32 array, C-contiguous, shape ``(n_frames, n_bins)``
        Input, extended by reflection beyond its first and last frame and bin.
    weights : float32 array of ``2 * radius + zoom`` taps
        The Gaussian kernel convolved with a box of ``zoom`` taps, divided by ``zoom``.
    zoom : int >= 1
    first : int
        Frame at which the first output column starts.
    n_columns : int
        Output columns; column ``c`` averages frames ``first + zoom * c + [0, zoom)``.

    Returns
    -------
    float32 array of shape ``(n_columns, n_bins // zoom)``: equals
    ``zoom_out(smooth(spec)[first : first + zoom * n_columns], zoom)`` to float32 rounding.
    """
    cdef Py_ssize_t n_frames = spec.shape[0], n_bins = spec.shape[1]
    cdef Py_ssize_t n_taps = weights.shape[0]
    if zoom < 1 or n_taps < zoom or (n_taps - zoom) % 2:
        raise ValueError(f"{n_taps} weights do not fit zoom={zoom}")
    if first < 0 or n_columns < 0 or first + zoom * n_columns > n_frames:
        raise ValueError(f"columns of frames [{first}, {first + zoom * n_columns}) outside [0, {n_frames})")
    cdef Py_ssize_t radius = (n_taps - zoom) // 2
    cdef Py_ssize_t n_rows = n_bins // zoom
    out = np.empty((n_columns, n_rows), dtype=np.float32)
    if n_columns == 0 or n_rows == 0:
        return out
    cdef float[:, ::1] out_v = out
    # One column smoothed along time, then its reflection-extended bins split into ``zoom``
    # phases, so that the frequency pass reads contiguous memory:
    # extended bin ``i - radius`` is ``phases[i % zoom, i // zoom]``.
    cdef Py_ssize_t n_extended = n_bins + 2 * radius
    cdef Py_ssize_t phase_len = (n_extended + zoom - 1) // zoom
    cdef float[::1] column = np.empty(n_bins, dtype=np.float32)
    cdef float[:, ::1] phases = np.zeros((zoom, phase_len), dtype=np.float32)
    cdef Py_ssize_t[:, ::1] phase_bins = np.zeros((zoom, phase_len), dtype=np.intp)
    cdef Py_ssize_t c, m, b, q, i, start
    for i in range(n_extended):
        phase_bins[i % zoom, i // zoom] = _reflect(i - radius, n_bins)
    cdef float w
    cdef const float* src
    cdef float* col
    cdef float* dst
    cdef const float* phase
    with nogil:
        col = &column[0]
        for c in range(n_columns):
            # time: the column is the weighted sum of 2 * radius + zoom frames
            start = first + zoom * c - radius
            src = &spec[_reflect(start, n_frames), 0]
            w = weights[0]
            for b in range(n_bins):
                col[b] = w * src[b]
            for m in range(1, n_taps):
                src = &spec[_reflect(start + m, n_frames), 0]
                w = weights[m]
                for b in range(n_bins):
                    col[b] += w * src[b]
            # frequency: the same kernel over the column's bins, every zoom-th position
            for m in range(zoom):
                for i in range(phase_len):
                    phases[m, i] = col[phase_bins[m, i]]
            dst = &out_v[c, 0]
            phase = &phases[0, 0]
            w = weights[0]
            for q in range(n_rows):
                dst[q] = w * phase[q]
            for m in range(1, n_taps):
                phase = &phases[m % zoom, m // zoom]
                w = weights[m]
                for q in range(n_rows):
                    dst[q] += w * phase[q]
    return out


def power_of_bins(const float[:, ::1] spectrum, Py_ssize_t first_bin, float[:, :] out):
    """``out[:] = |X[:, first_bin : first_bin + out.shape[1]]| ** 2`` for complex64 ``X``.

    Parameters
    ----------
    spectrum : float32 array, C-contiguous, shape ``(n_frames, 2 * n_fft_bins)``
        A complex64 spectrum viewed as interleaved (real, imaginary) float32 pairs.
    first_bin : int
        First FFT bin written to ``out``.
    out : float32 array, shape ``(n_frames, n_kept)``, contiguous along bins (rows may be
        spaced further apart, as in a slice of columns of a wider array)
    """
    cdef Py_ssize_t n_frames = out.shape[0], n_kept = out.shape[1]
    cdef Py_ssize_t f, k
    cdef const float* x
    cdef float* power
    cdef float re, im
    if spectrum.shape[0] != n_frames or first_bin < 0 or 2 * (first_bin + n_kept) > spectrum.shape[1]:
        raise ValueError("bins outside the spectrum")
    if n_frames == 0 or n_kept == 0:
        return
    if out.strides[1] != sizeof(float):
        raise ValueError("out must be contiguous along bins")
    with nogil:
        for f in range(n_frames):
            x = &spectrum[f, 2 * first_bin]
            power = &out[f, 0]
            for k in range(n_kept):
                re = x[2 * k]
                im = x[2 * k + 1]
                power[k] = re * re + im * im


def class_sums(const float[:, ::1] spec, const unsigned char[::1] active):
    """Per-bin sums (float64) of the active and of the inactive frames of ``spec``.

    Parameters
    ----------
    spec : float32 array, C-contiguous, shape ``(n_frames, n_bins)``
    active : uint8 (or bool viewed as uint8) array of ``n_frames``: nonzero for an active frame

    Returns
    -------
    ``(active_sum, inactive_sum)``: two float64 arrays of ``n_bins``, summed frame after
    frame as ``spec[active].sum(axis=0, dtype=np.float64)`` does.
    """
    cdef Py_ssize_t n_frames = spec.shape[0], n_bins = spec.shape[1]
    if active.shape[0] != n_frames:
        raise ValueError(f"{active.shape[0]} activity flags for {n_frames} frames")
    sums = np.zeros((2, n_bins), dtype=np.float64)
    if n_frames == 0 or n_bins == 0:
        return sums[0], sums[1]
    cdef double[:, ::1] sums_v = sums
    cdef Py_ssize_t f, b
    cdef const float* src
    cdef double* acc
    with nogil:
        for f in range(n_frames):
            src = &spec[f, 0]
            acc = &sums_v[0 if active[f] else 1, 0]
            for b in range(n_bins):
                acc[b] += src[b]
    return sums[0], sums[1]


def subtract_class_means(
    float[:, ::1] spec,
    const unsigned char[::1] active,
    const float[::1] active_mean,
    const float[::1] inactive_mean,
):
    """In place: ``spec[f] = max(spec[f] - mean, 0)``, with the mean of frame ``f``'s class.

    Parameters
    ----------
    spec : float32 array, C-contiguous, shape ``(n_frames, n_bins)``; overwritten
    active : uint8 (or bool viewed as uint8) array of ``n_frames``: nonzero for an active frame
    active_mean, inactive_mean : float32 arrays of ``n_bins``
    """
    cdef Py_ssize_t n_frames = spec.shape[0], n_bins = spec.shape[1]
    if active.shape[0] != n_frames:
        raise ValueError(f"{active.shape[0]} activity flags for {n_frames} frames")
    if active_mean.shape[0] != n_bins or inactive_mean.shape[0] != n_bins:
        raise ValueError(f"means of {active_mean.shape[0]} and {inactive_mean.shape[0]} bins for {n_bins}")
    if n_frames == 0 or n_bins == 0:
        return
    cdef Py_ssize_t f, b
    cdef float* row
    cdef const float* mean
    cdef float v
    with nogil:
        for f in range(n_frames):
            row = &spec[f, 0]
            mean = &active_mean[0] if active[f] else &inactive_mean[0]
            for b in range(n_bins):
                v = row[b] - mean[b]
                row[b] = 0 if v < 0 else v  # np.maximum(v, 0), NaN included
