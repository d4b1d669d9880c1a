"""The detection score: every peak ranked, calibrated on validation data, monotone, kept in the bundle."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pipeline.detection.calibration import IDENTITY, CalibrationError, ScoreCalibration, fit_calibration  # noqa: E402
from pipeline.detection.events import find_detections  # noqa: E402
from pipeline.evaluation.metrics import precision_recall_curve  # noqa: E402

# Keras's TensorFlow backend calls np.array on tensors in a way numpy 2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _peaks(n: int, seed: int):
    """Raw scores of ``n`` peaks and whether each matched a call, a call being likelier the
    higher the score (P(match) = raw ** 2: the raw score is over-confident)."""
    rng = np.random.default_rng(seed)
    raw = rng.random(n).astype(np.float32)
    return raw, rng.random(n) < raw.astype(np.float64) ** 2


@pytest.fixture(scope="module")
def fitted() -> ScoreCalibration:
    raw, matched = _peaks(20_000, 0)
    return fit_calibration(raw, matched)


def test_scores_are_monotone_in_the_raw_score_and_within_0_1(fitted):
    assert fitted.method == "isotonic" and fitted.peaks == 20_000 and 0 < fitted.matched < 20_000
    raw = np.concatenate([[-0.5, 0.0], np.linspace(0, 1, 10_001, dtype=np.float32), [1.0, 1.5]])
    score = fitted(raw)
    assert score.dtype == np.float64
    assert np.all((score >= 0) & (score <= 1))
    assert np.all(np.diff(score[2:-2]) > 0)  # strictly: no two raw scores tie
    crowded = np.float32(1) - np.arange(1, 2000, dtype=np.float32) * np.float32(2**-24)  # float32 just below 1
    assert len(np.unique(fitted(crowded))) == len(crowded)
    assert score[0] == score[1] == fitted(0.0) and score[-1] == score[-2] == fitted(1.0)


def test_a_calibrated_score_is_about_the_precision_of_its_peaks(fitted):
    raw, matched = _peaks(20_000, 1)  # new peaks from the same model
    score = fitted(raw)
    bins = np.digitize(raw, np.linspace(0, 1, 11)[1:-1])
    for b in range(10):  # about 2,000 peaks each
        inside = bins == b
        assert abs(matched[inside].mean() - score[inside].mean()) < 0.03
    # The raw score was over-confident: at raw 0.5 about a quarter of the peaks are calls.
    assert abs(float(fitted(0.5)) - 0.25) < 0.05


def test_calibration_keeps_the_ranking_and_the_average_precision(fitted):
    raw, matched = _peaks(3000, 2)
    before = precision_recall_curve(raw, matched, n_positives=int(matched.sum()) + 40)
    after = precision_recall_curve(fitted(raw), matched, n_positives=int(matched.sum()) + 40)
    assert after.average_precision == before.average_precision
    np.testing.assert_array_equal(np.argsort(-fitted(raw), kind="stable"), np.argsort(-raw, kind="stable"))


def test_the_identity_leaves_raw_scores_as_they_are():
    raw = np.random.default_rng(3).random(1000).astype(np.float32)
    np.testing.assert_array_equal(IDENTITY(raw), raw)
    assert IDENTITY.is_identity and ScoreCalibration.from_dict(None) is IDENTITY


def test_nothing_to_learn_is_refused():
    raw = np.linspace(0, 1, 50)
    for matched, reason in [(np.zeros(50, bool), "no peak matched"), (np.ones(50, bool), "every peak matched")]:
        with pytest.raises(CalibrationError, match=reason):
            fit_calibration(raw, matched)
    with pytest.raises(CalibrationError, match="no peak"):
        fit_calibration([], [])


@pytest.mark.parametrize(
    "raw, calibrated, reason",
    [
        ((0.0, 0.5, 1.0), (0.1, 0.1, 0.9), "increase strictly"),
        ((0.0, 0.5, 1.0), (0.1, 0.5, 1.2), "within \\[0, 1\\]"),
        ((0.1, 1.0), (0.1, 0.9), "from 0 to 1"),
        ((0.0, 0.6, 0.5, 1.0), (0.1, 0.2, 0.3, 0.9), "from 0 to 1"),
        ((0.0, 1.0), (0.0, float("nan")), "finite"),
        ((0.0, 1.0), (0.0,), "as many"),
    ],
)
def test_maps_that_would_change_the_ranking_or_leave_0_1_are_refused(raw, calibrated, reason):
    with pytest.raises(CalibrationError, match=reason):
        ScoreCalibration(raw, calibrated)
    with pytest.raises(CalibrationError, match=reason):
        ScoreCalibration.from_dict({"raw": list(raw), "calibrated": list(calibrated)})


def test_events_report_the_calibrated_score_and_the_threshold_is_in_its_units(fitted):
    rng = np.random.default_rng(4)
    n = 4000
    raw = np.convolve(rng.random(n), np.ones(5) / 5, mode="same")
    raw = ((raw - raw.min()) / (raw.max() - raw.min())).astype(np.float32)
    probs = np.column_stack([1 - raw, rng.random(n), rng.random(n)]).astype(np.float32)
    times = np.arange(n) * 0.00116
    plain = find_detections(probs, times, ["a", "b"], {"detection": 0})
    every = find_detections(probs, times, ["a", "b"], {"detection": 0}, calibration=fitted)
    # The same peaks, the same raw class probabilities; the score mapped.
    pd.testing.assert_frame_equal(every.drop(columns="score"), plain.drop(columns="score"))
    np.testing.assert_array_equal(every["score"].to_numpy(), fitted(plain["score"].to_numpy()))
    assert every["score"].dtype == np.float64
    for threshold in np.quantile(every["score"], [0.2, 0.5, 0.8]).round(3):
        kept = find_detections(probs, times, ["a", "b"], {"detection": threshold}, calibration=fitted)
        assert 0 < len(kept) < len(every)
        pd.testing.assert_frame_equal(kept, every[every["score"] >= threshold].reset_index(drop=True))


# ------------------------------------------------------------------------------------------
# The bundle: saved, loaded, applied by Model.detect
# ------------------------------------------------------------------------------------------


def _resaved_default(folder: Path, calibration: ScoreCalibration | None) -> Path:
    """The bundled model's networks and boosters saved again with ``calibration`` (None: the raw score)."""
    from pipeline.model.bundle import DEFAULT_BUNDLE, load_bundle, save_bundle

    default = load_bundle(DEFAULT_BUNDLE)
    return save_bundle(
        folder / "model", architecture=default.architecture,
        classes=default.classes, networks={"cnn_8": default.network("cnn_8")}, boosters=default.boosters(),
        thresholds={**default.thresholds, "detection": 0.3}, spectrogram=default.spectrogram,
        training={}, metrics={}, params={}, calibration=calibration,
    )  # fmt: skip


@pytest.fixture(scope="module")
def calibrated_bundle(tmp_path_factory, fitted):
    """The bundled model's networks and boosters saved again with ``fitted`` as calibration."""
    return _resaved_default(tmp_path_factory.mktemp("calibrated"), fitted)


def test_the_calibration_round_trips_through_the_bundle(calibrated_bundle, fitted):
    from pipeline.model.bundle import load_bundle

    manifest = json.loads((calibrated_bundle / "manifest.json").read_text())
    assert manifest["calibration"]["method"] == "isotonic"
    assert all(isinstance(x, float) for x in manifest["calibration"]["raw"] + manifest["calibration"]["calibrated"])
    bundle = load_bundle(calibrated_bundle)
    assert bundle.calibration == fitted
    np.testing.assert_array_equal(load_bundle(bundle.path).calibration([0.2, 0.7]), fitted([0.2, 0.7]))


def test_a_hand_edited_calibration_that_is_not_monotone_is_refused(calibrated_bundle, tmp_path):
    from pipeline.model.bundle import BundleError, load_bundle

    copy = tmp_path / "model"
    shutil.copytree(calibrated_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["calibration"]["calibrated"][1] = 0.999
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest.json: calibrated scores must increase strictly") as caught:
        load_bundle(copy)
    assert "\n" not in str(caught.value)


def test_model_detect_reports_the_calibrated_score(calibrated_bundle, fitted, real_data, tmp_path):
    import pipeline

    recording = real_data / "annotated" / "audio" / "20180627_215323-RHIFER-LR_0_0.5.wav"
    uncalibrated = _resaved_default(tmp_path, None)
    raw = pipeline.open_model(uncalibrated, thresholds={"detection": 0.0}).detect(recording)
    calibrated = pipeline.open_model(calibrated_bundle, thresholds={"detection": 0.0}).detect(recording)
    assert len(raw) > 5
    pd.testing.assert_frame_equal(calibrated.drop(columns="score"), raw.drop(columns="score"))
    assert calibrated["score"].dtype == np.float32  # as the detection tables store it
    np.testing.assert_array_equal(calibrated["score"].to_numpy(), fitted(raw["score"].to_numpy()).astype(np.float32))
    tuned = pipeline.open_model(calibrated_bundle).detect(recording)  # its detection threshold: 0.3
    assert 0 < len(tuned) < len(calibrated) and (tuned["score"] >= 0.3).all()
    assert len(tuned) == int((calibrated["score"] >= 0.3).sum())


# ------------------------------------------------------------------------------------------
# Real audio with the bundled model
# ------------------------------------------------------------------------------------------


def test_a_low_threshold_gives_more_calls_than_the_default_on_real_audio(real_data):
    import pipeline

    files = sorted(str(p) for p in (real_data / "unannotated").glob("0166_*.wav"))[:2]
    assert len(files) == 2
    model = pipeline.open_model()
    default = model.detect(files)
    low = pipeline.open_model(thresholds={"detection": 0.01}).detect(files)
    assert len(low) > len(default) > 0
    assert low["score"].min() < 0.5 and 0.01 < model.thresholds["detection"] <= default["score"].min()
    # The default's calls are the low threshold's calls whose score reaches the default.
    strong = low[low["score"] >= model.thresholds["detection"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(strong, default, check_like=False)


def _recall(calls: pd.DataFrame, table: pd.DataFrame) -> float:
    from pipeline.evaluation.matching import call_events, match_detections

    detections = pd.DataFrame({"recording": table["file"].map(lambda f: Path(f).name), "time": table["time"],
                               "score": table["score"]})  # fmt: skip
    matches = match_detections(calls, detections)
    return len(set(matches[matches >= 0])) / len(call_events(calls))


def test_recall_at_threshold_0_01_reaches_the_model_s_ceiling_on_annotated_real_calls(real_data):
    import pipeline
    from pipeline.annotations import read_batdetect2
    from pipeline.detection.settings import DetectSettings

    annotated = read_batdetect2(real_data / "annotated" / "anns").calls
    annotated = annotated[annotated["event"] == "echolocation"]
    calls = pd.DataFrame({"recording": annotated["file"], "position": annotated["position"]})
    audio = real_data / "annotated" / "audio"
    default = _recall(calls, pipeline.open_model().detect(audio))
    low = _recall(calls, pipeline.open_model(thresholds={"detection": 0.01}).detect(audio))
    # The ceiling: every window scored, every peak of the call score kept.
    every = DetectSettings(thresholds={"detection": 0.0}, scan_stride=1, scan_gamma=0.0, booster_gate=0.0)
    ceiling = _recall(calls, pipeline.open_model(detect_settings=every).detect(audio))
    assert default <= low == ceiling
    assert ceiling > 0.9


# ------------------------------------------------------------------------------------------
# Training: calibrated on the validation recordings, thresholds tuned after
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_calibrates_the_score_and_evaluation_ranks_every_peak(tmp_path_factory, client):
    from pipeline.annotations.dataset import read_dataset
    from pipeline.evaluation.metrics import detection_average_precision
    from pipeline.evaluation.recordings import calls_table, detect_recordings
    from pipeline.io.cube import open_cube
    from pipeline.model.bundle import load_bundle
    from pipeline.model.predictor import Predictor
    from pipeline.simulation import simulate_archive
    from pipeline.training.job import TrainSettings, train

    root = tmp_path_factory.mktemp("calibrated-training")
    archive = simulate_archive(root / "audio", minutes=0.5, seed=12, empty_fraction=0.2, test_fraction=0.4)
    report = train(
        archive.annotations_npz, archive.root, root / "model", cube=root / "cube.zarr", client=client,
        settings=TrainSettings(model_type="cnn8", epochs=1, seed=1), progress=False,
    )  # fmt: skip
    bundle = load_bundle(root / "model")
    calibration = bundle.calibration
    assert calibration.method == "isotonic" and calibration.peaks > calibration.matched > 0
    assert json.loads((root / "model" / "manifest.json").read_text())["calibration"] == calibration.to_dict()
    assert all(0.0 <= value <= 1.0 for value in bundle.thresholds.values())

    # Evaluation: every peak, down to the lowest, ranked by the calibrated score, whose AP is the
    # raw score's (the map keeps the order).
    cube = open_cube(root / "cube.zarr")
    test = read_dataset(archive.annotations_npz).recoded(bundle.classes).test
    calls = calls_table(test, cube)
    predictor = Predictor.from_bundle(bundle)
    raw = detect_recordings(predictor, cube, test, bundle.classes)
    calibrated = detect_recordings(predictor, cube, test, bundle.classes, calibration=calibration)
    assert len(calibrated) == len(raw) > 0
    np.testing.assert_array_equal(calibrated["score"].to_numpy(), calibration(raw["score"]))
    ap = detection_average_precision(calls, calibrated).average_precision
    assert ap == detection_average_precision(calls, raw).average_precision
    assert report.metrics["detection"]["ap"] == pytest.approx(ap, abs=1e-12)
