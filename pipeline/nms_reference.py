"""Pure-Python reference of :func:`pipeline.nms.peaks_1d`, used only by the tests."""

import numpy as np


def peaks_1d_reference(prob, radius, threshold=0.0):
    prob = np.asarray(prob, dtype=np.float32)
    peaks = []
    for i, v in enumerate(prob):
        if not v >= threshold:
            continue
        lo, hi = max(0, i - radius), min(len(prob), i + radius + 1)
        window = prob[lo:hi]
        left = prob[lo:i]
        if np.all(window <= v) and not np.any(left == v):
            peaks.append(i)
    return np.asarray(peaks, dtype=np.int64)
