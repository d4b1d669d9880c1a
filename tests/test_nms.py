import numpy as np
import pytest
from pipeline.nms import peaks_1d

from pipeline.nms_reference import peaks_1d_reference


def test_known_case():
    prob = np.array([0, 0.2, 0.9, 0.1, 0.0, 0.95, 0.95, 0.3], np.float32)
    assert peaks_1d(prob, 1, 0.5).tolist() == [2, 5]  # plateau: first frame only
    assert peaks_1d(prob, 3, 0.5).tolist() == [5]
    assert peaks_1d(prob, 3, 0.99).tolist() == []


@pytest.mark.parametrize("seed", range(20))
def test_cython_equals_reference(seed):
    rng = np.random.default_rng(seed)
    prob = rng.random(500).astype(np.float32)
    prob[rng.integers(0, 500, 50)] = 0.5  # ties
    for radius in (0, 1, 5, 21):
        np.testing.assert_array_equal(peaks_1d(prob, radius, 0.3), peaks_1d_reference(prob, radius, 0.3))


def test_nan_is_never_a_peak_and_negative_radius_refused():
    prob = np.array([np.nan, 0.5, np.nan], np.float32)
    assert peaks_1d(prob, 1, 0.0).tolist() == [1]
    with pytest.raises(ValueError):
        peaks_1d(prob, -1)
