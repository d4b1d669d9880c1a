# cython: boundscheck=False, wraparound=False, cdivision=True
"""One-dimensional non-maximum suppression over per-frame class probabilities.

A frame is a peak of a class when no frame within ``radius`` frames on either side has a
greater probability, and its probability reaches ``threshold``. Among equal neighbouring
values (a plateau) only the first frame is kept, so that a flat top gives one detection.
"""

import numpy as np
cimport numpy as cnp

cnp.import_array()


def peaks_1d(const float[::1] prob, Py_ssize_t radius, float threshold=0.0):
    """Indices of the peaks of ``prob`` (int64, increasing).

    Parameters
    ----------
    prob : float32 array, C-contiguous, shape (n,)
    radius : frames on each side that must not exceed the peak (the reference system uses 21)
    threshold : minimum probability of a peak
    """
    cdef Py_ssize_t n = prob.shape[0]
    cdef Py_ssize_t i, j, lo, hi
    cdef float v
    cdef bint is_peak
    out = np.empty(n, dtype=np.int64)
    cdef cnp.int64_t[::1] out_v = out
    cdef Py_ssize_t count = 0
    if radius < 0:
        raise ValueError("radius must be >= 0")
    with nogil:
        for i in range(n):
            v = prob[i]
            if not v >= threshold:  # also rejects NaN
                continue
            lo = i - radius if i >= radius else 0
            hi = i + radius + 1 if i + radius + 1 <= n else n
            is_peak = True
            for j in range(lo, hi):
                if prob[j] > v or (j < i and prob[j] == v):
                    is_peak = False
                    break
            if is_peak:
                out_v[count] = i
                count += 1
    return out[:count].copy()
