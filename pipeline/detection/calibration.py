"""The detection score's calibration: from a peak's raw call score to roughly the precision of such peaks.

A model's call score ``1 - P(not call)`` ranks the peaks of a recording but says little about how
often a peak of that score is a call: a network trained with balanced windows is over- or
under-confident on real archives. The *score* batml reports (:mod:`pipeline.detection.schema`) is
that raw score mapped through the model's :class:`ScoreCalibration`, fitted at training time on
the validation recordings (:func:`fit_calibration`), so that among the peaks of score ``p``
about a fraction ``p`` matched an annotated call there.

The map is piecewise linear between breakpoints ``(raw, calibrated)`` from raw 0 to raw 1, both
strictly increasing: it never changes the order of two peaks (so the detection AP, the matching
and the NMS are those of the raw score) and its values lie in [0, 1]. It is stored as these plain
numbers in the bundle's manifest (``"calibration"``, :meth:`ScoreCalibration.to_dict`); a bundle
without one uses :data:`IDENTITY`, the raw score itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Weight of the identity in a fitted map, ``(1 - BLEND) * isotonic + BLEND * raw``: isotonic
#: regression is flat over runs of peaks of equal precision, and a flat part would tie peaks
#: that the raw score ranks, changing the AP; this weight keeps the map strictly increasing
#: and moves a calibrated score by at most 0.01.
BLEND = 0.01


class CalibrationError(ValueError):
    """A calibration that cannot be fitted or read; one line saying why."""


@dataclass(frozen=True)
class ScoreCalibration:
    """A strictly increasing piecewise-linear map of the raw call score onto [0, 1].

    Parameters
    ----------
    raw : tuple of float
        Breakpoints of the raw call score, strictly increasing from 0 to 1.
    calibrated : tuple of float
        The calibrated score at each breakpoint, strictly increasing, within [0, 1].
    method : str
        How the map was made: ``"identity"`` or ``"isotonic"`` (:func:`fit_calibration`).
    peaks, matched : int
        The validation peaks it was fitted on, and how many of them matched an annotated call
        (0 for the identity).
    """

    raw: tuple[float, ...] = (0.0, 1.0)
    calibrated: tuple[float, ...] = (0.0, 1.0)
    method: str = "identity"
    peaks: int = 0
    matched: int = 0

    def __post_init__(self):
        raw = np.asarray(self.raw, dtype=np.float64)
        calibrated = np.asarray(self.calibrated, dtype=np.float64)
        if raw.ndim != 1 or raw.shape != calibrated.shape or len(raw) < 2:
            raise CalibrationError(
                f"a calibration needs as many raw as calibrated breakpoints, at least 2 "
                f"(got {raw.size} and {calibrated.size})"
            )
        if not (np.all(np.isfinite(raw)) and np.all(np.isfinite(calibrated))):
            raise CalibrationError("calibration breakpoints must be finite numbers")
        if raw[0] != 0.0 or raw[-1] != 1.0 or np.any(np.diff(raw) <= 0):
            raise CalibrationError("raw calibration breakpoints must increase strictly from 0 to 1")
        if calibrated[0] < 0.0 or calibrated[-1] > 1.0 or np.any(np.diff(calibrated) <= 0):
            raise CalibrationError(
                "calibrated scores must increase strictly within [0, 1] (a flat or falling part "
                "would change the ranking of the detections)"
            )
        object.__setattr__(self, "raw", tuple(float(x) for x in raw))
        object.__setattr__(self, "calibrated", tuple(float(y) for y in calibrated))

    def __call__(self, raw_scores) -> np.ndarray:
        """The calibrated scores of raw call scores (clipped to [0, 1] first), as float64.

        float64, because a map flatter than the identity would merge, in float32, raw scores
        that differ by a few units in the last place (a confident model's scores crowd below
        1): in float64 two distinct raw scores keep distinct calibrated ones, so that the
        ranking and the AP computed in memory are exactly those of the raw score. The
        detection tables store the score as float32 (:mod:`pipeline.detection.schema`).
        """
        return np.interp(np.asarray(raw_scores, dtype=np.float64), self.raw, self.calibrated)

    @property
    def is_identity(self) -> bool:
        """Whether the map leaves every raw score in [0, 1] as it is."""
        return self.raw == self.calibrated

    def to_dict(self) -> dict:
        """The map as plain JSON numbers (the manifest's ``"calibration"``)."""
        return {
            "method": self.method,
            "raw": list(self.raw),
            "calibrated": list(self.calibrated),
            "peaks": int(self.peaks),
            "matched": int(self.matched),
        }

    @classmethod
    def from_dict(cls, document: Mapping | None) -> ScoreCalibration:
        """The map of :meth:`to_dict`'s document; :data:`IDENTITY` for ``None``.

        Raises
        ------
        CalibrationError
            When the document is not a valid map (one line saying why).
        """
        if document is None:
            return IDENTITY
        if not isinstance(document, Mapping):
            raise CalibrationError(f"calibration must be an object, not {type(document).__name__}")
        try:
            raw = [float(x) for x in document["raw"]]
            calibrated = [float(y) for y in document["calibrated"]]
        except KeyError as exc:
            raise CalibrationError(f"calibration lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError):
            raise CalibrationError("calibration breakpoints must be lists of numbers") from None
        return cls(
            tuple(raw), tuple(calibrated), str(document.get("method", "isotonic")),
            int(document.get("peaks", 0)), int(document.get("matched", 0)),
        )  # fmt: skip


IDENTITY = ScoreCalibration()
"""The raw call score itself: the calibration of a bundle that has none."""


def fit_calibration(raw_scores: Sequence[float], matched: Sequence[bool], blend: float = BLEND) -> ScoreCalibration:
    """The calibration of a model from its peaks on validation recordings.

    Parameters
    ----------
    raw_scores : array-like
        The raw call score of every peak of the validation recordings (every peak, whatever
        its score: :func:`pipeline.detection.events.find_detections` at threshold 0).
    matched : array-like of bool
        Whether each peak matched an annotated call
        (:func:`pipeline.evaluation.matching.match_detections`).
    blend : float
        Weight of the identity in the map (:data:`BLEND`), in (0, 1].

    Returns
    -------
    ScoreCalibration
        ``method="isotonic"``: scikit-learn's isotonic regression of ``matched`` on the raw score
        (the precision of the peaks around each score, non-decreasing in it), its breakpoints
        plus raw 0 and 1, blended with the identity so that it increases strictly.

    Raises
    ------
    CalibrationError
        When there is no peak, or every peak or none matched a call (nothing to learn).
    """
    from sklearn.isotonic import IsotonicRegression

    raw = np.clip(np.asarray(raw_scores, dtype=np.float64).ravel(), 0.0, 1.0)
    matched = np.asarray(matched, dtype=bool).ravel()
    if raw.shape != matched.shape:
        raise CalibrationError(f"{raw.size} scores given for {matched.size} match flags")
    if not (np.all(np.isfinite(raw)) and 0.0 < float(blend) <= 1.0):
        raise CalibrationError("scores must be finite and blend within (0, 1]")
    n_matched = int(matched.sum())
    if n_matched == 0 or n_matched == len(raw):
        what = "no peak" if len(raw) == 0 else ("no peak matched a call" if n_matched == 0 else "every peak matched a call")
        raise CalibrationError(f"cannot calibrate the scores: {what} on the validation recordings")
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    isotonic.fit(raw, matched.astype(np.float64))
    breakpoints = np.unique(np.concatenate([[0.0], isotonic.X_thresholds_, [1.0]]))
    values = np.clip((1.0 - blend) * isotonic.predict(breakpoints) + blend * breakpoints, 0.0, 1.0)
    # Rounding can tie two breakpoints a hair apart: keep the first of a tie, and raw 1.
    kept = [0]
    for i in range(1, len(values)):
        if values[i] > values[kept[-1]]:
            kept.append(i)
    kept[-1] = len(values) - 1
    return ScoreCalibration(tuple(breakpoints[kept]), tuple(values[kept]), "isotonic", len(raw), n_matched)
