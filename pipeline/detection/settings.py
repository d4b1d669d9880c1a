"""What a detection does beyond the model's own settings: thresholds, the fast path, the outputs.

Shared by ``batml detect`` (:mod:`pipeline.detection.archive`) and
:meth:`pipeline.model.Model.detect`, so that both find the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.detection.scorers import ENGINES
from pipeline.detection.scoring import Scan

#: Precisions of the network on the runtime: the bundle's own choice (``auto``), or one of them.
PRECISIONS = ("auto", "float", "int8")

#: Outputs ``--format`` can ask for; the Parquet parts are always written (they are the journal).
FORMATS = ("parquet", "csv", "raven")


class DetectError(ValueError):
    """A detection run that cannot start as asked; one line for the user."""


@dataclass(frozen=True)
class DetectSettings:
    """What a detection run does beyond the model's own settings.

    Parameters
    ----------
    thresholds : dict, optional
        Overrides of the model's tuned thresholds: ``"detection"`` and/or class names.
    scan_stride, scan_gamma : int, float
        The coarse-to-fine scan of the windows (:class:`pipeline.detection.scoring.Scan`); stride 1 scores
        every window (the dense reference).
    booster_gate : float
        Hybrids: the boosters score only the windows whose network head gives at least this call
        score (0: every scored window), or, with ``booster_margin``, only near the peaks of that
        call score that reach it (:mod:`pipeline.detection.scorers`).
    booster_margin : int or None
        Hybrids: when set, the boosters run only within this many columns of such a peak (fewer
        windows on dense passes, but not within 0.005 of dense float's AP on real sets: off by
        default).
    precision : {"auto", "float", "int8"}
        The network's precision on the runtime: the bundle's own (``auto``: int8 when training
        found that it keeps the detection AP), or forced (:func:`pipeline.model.inference.runtime_graphs`).
    engine : {"onnxruntime", "keras"}
        Where the network of a one-stage CNN model runs: ONNX Runtime (no TensorFlow in the
        workers), or Keras (the same scan, for comparisons). Other models always run in Keras.
    formats : tuple of str
        Derived outputs to write besides the Parquet table: ``"csv"``, ``"raven"``.
    raven_per_recording : bool
        One Raven table per recording (Raven's own habit) or one combined table.
    """

    thresholds: dict | None = None
    scan_stride: int = 4
    scan_gamma: float = 0.02
    booster_gate: float = 0.01
    booster_margin: int | None = None
    precision: str = "auto"
    engine: str = "onnxruntime"
    formats: tuple[str, ...] = FORMATS
    raven_per_recording: bool = True

    def __post_init__(self):
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise DetectError(f"unknown output format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
        if not 0.0 <= float(self.booster_gate) <= 1.0:
            raise DetectError(f"booster_gate={self.booster_gate} must lie in [0, 1]")
        if self.booster_margin is not None and int(self.booster_margin) < 0:
            raise DetectError(f"booster_margin={self.booster_margin} must be at least 0 (or None: gate every window)")
        if self.precision not in PRECISIONS:
            raise DetectError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.engine not in ENGINES:
            raise DetectError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        try:
            self.scan
        except ValueError as exc:
            raise DetectError(str(exc)) from None

    @property
    def scan(self) -> Scan:
        return Scan(stride=int(self.scan_stride), gamma=float(self.scan_gamma))

    def result_dict(self) -> dict:
        """The settings that change the detections (the journal refuses a change of these)."""
        return {
            "scan_stride": int(self.scan_stride),
            "scan_gamma": float(self.scan_gamma),
            "booster_gate": float(self.booster_gate),
            "booster_margin": None if self.booster_margin is None else int(self.booster_margin),
            "precision": self.precision,
            "engine": self.engine,
        }


def resolve_thresholds(bundle, overrides: dict | None) -> dict:
    """The bundle's tuned thresholds with the user's overrides (``"detection"`` and class names), checked."""
    thresholds = dict(bundle.thresholds)
    for key, value in (overrides or {}).items():
        if key != "detection" and key not in bundle.classes:
            raise DetectError(
                f"--threshold {key}: the model has no class {key!r} (classes: {', '.join(bundle.classes)})"
            )
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise DetectError(f"--threshold {key}={value}: a threshold lies in [0, 1]")
        thresholds[key] = value
    return thresholds
