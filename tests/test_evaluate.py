"""Scores of detections against annotated calls, on cases computed by hand."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, hamming_loss

from pipeline.evaluation.matching import call_events, event_labels, match_detections
from pipeline.evaluation.metrics import (
    class_average_precision,
    detection_average_precision,
    end_to_end_scores,
    multilabel_scores,
    precision_recall_curve,
    reference_scores,
    top1_accuracy,
)
from pipeline.evaluation.report import evaluate, format_report
from pipeline.evaluation.thresholds import tune_thresholds

CLASSES = ["A", "B", "C"]


def make_calls(rows):
    """Calls from (recording, position, class) tuples."""
    return pd.DataFrame(rows, columns=["recording", "position", "class"])


def make_detections(rows, classes=()):
    """Detections from (recording, time, score, *probabilities) tuples."""
    columns = ["recording", "time", "score", *(f"prob_{c}" for c in classes)]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# Events and matching
# --------------------------------------------------------------------------------------------


def test_overlapping_calls_are_one_event_with_both_labels():
    calls = make_calls([("b", 0.5, 3), ("a", 2.0, 1), ("a", 1.0, 2), ("a", 1.0, 1)])
    events = call_events(calls)
    assert events["recording"].tolist() == ["a", "a", "b"]
    assert events["position"].tolist() == [1.0, 2.0, 0.5]
    assert events["n_calls"].tolist() == [2, 1, 1]
    labels = event_labels(calls, 3)
    assert labels.tolist() == [[True, True, False], [True, False, False], [False, False, True]]


def test_tolerance_is_inclusive_and_10_ms_by_default():
    calls = make_calls([("a", 1.0, 1), ("a", 2.0, 1), ("a", 3.0, 1), ("a", 4.0, 1), ("a", 5.0, 1)])
    detections = make_detections(
        [
            ("a", 1.0105, 0.9),  # 10.5 ms late: no
            ("a", 2.0095, 0.9),  # 9.5 ms late: yes
            ("a", 2.9895, 0.9),  # 10.5 ms early: no
            ("a", 3.9905, 0.9),  # 9.5 ms early: yes
            ("a", 5.01, 0.9),  # exactly 10 ms (5.01 - 5.0 rounds above 0.01): yes
        ]
    )
    assert match_detections(calls, detections).tolist() == [-1, 1, -1, 3, 4]
    # A wider tolerance catches the 10.5 ms ones.
    assert match_detections(calls, detections, tolerance=0.011).tolist() == [0, 1, 2, 3, 4]


def test_two_detections_of_one_event_are_one_tp_one_fp():
    calls = make_calls([("a", 1.0, 1)])
    # The higher score wins although it is farther.
    detections = make_detections([("a", 1.001, 0.5), ("a", 1.008, 0.9)])
    assert match_detections(calls, detections).tolist() == [-1, 0]
    # With no class name, reference_scores scores the detection alone.
    scores = reference_scores(calls, detections, [], {"detection": 0.1})["detection"]
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 0)
    # At equal score, the nearer wins, whatever the row order.
    detections = make_detections([("a", 1.008, 0.7), ("a", 1.001, 0.7)])
    assert match_detections(calls, detections).tolist() == [-1, 0]


def test_a_detection_takes_the_nearest_free_event():
    calls = make_calls([("a", 1.000, 1), ("a", 1.012, 1)])
    # Both detections lie within 10 ms of both events. The first (higher score) takes the
    # nearer event, 1.012; the second gets the one left, although 1.012 is nearer to it too.
    detections = make_detections([("a", 1.007, 0.9), ("a", 1.008, 0.8)])
    assert match_detections(calls, detections).tolist() == [1, 0]


def test_detections_in_another_recording_never_match():
    calls = make_calls([("a", 1.0, 1), ("b", 2.0, 1)])
    detections = make_detections(
        [("b", 1.0, 0.9), ("a", 2.0, 0.9), ("c", 1.0, 0.9), ("a", 1.0, 0.1)]
    )
    assert match_detections(calls, detections).tolist() == [-1, -1, -1, 0]


def greedy_reference(calls, detections, tolerance):
    """The matching, spelled out: every pair, sorted, accepted when both are free."""
    events = sorted(set(zip(calls["recording"], calls["position"])))
    pairs = []
    for d, (recording, time, score) in enumerate(
        zip(detections["recording"], detections["time"], detections["score"])
    ):
        for e, (event_recording, position) in enumerate(events):
            distance = abs(time - position)
            if event_recording == recording and distance <= tolerance + 1e-9:
                pairs.append((-score, distance, d, e))
    matched, taken = [-1] * len(detections), set()
    for _, _, d, e in sorted(pairs):
        if matched[d] == -1 and e not in taken:
            matched[d] = e
            taken.add(e)
    return matched


@pytest.mark.parametrize("seed", range(5))
def test_matching_equals_the_greedy_reference(seed):
    rng = np.random.default_rng(seed)
    n_calls, n_detections = 60, 120
    # Positions and times on a 1 ms grid and scores on a 0.1 grid: many exact ties.
    calls = make_calls(
        list(
            zip(
                rng.choice(["r1", "r2", "r3"], n_calls),
                rng.integers(0, 300, n_calls) / 1000.0,
                rng.integers(1, 4, n_calls),
            )
        )
    )
    detections = make_detections(
        list(
            zip(
                rng.choice(["r1", "r2", "r3", "r4"], n_detections),
                rng.integers(0, 300, n_detections) / 1000.0,
                rng.integers(1, 10, n_detections) / 10.0,
            )
        )
    )
    matched = match_detections(calls, detections)
    assert matched.tolist() == greedy_reference(calls, detections, 0.010)
    assert len(set(matched[matched >= 0].tolist())) == int(np.sum(matched >= 0))


def test_matching_above_a_threshold_is_the_matching_of_those_detections():
    # Why one matching serves every threshold.
    rng = np.random.default_rng(11)
    calls = make_calls([("a", t, 1) for t in rng.integers(0, 500, 80) / 1000.0])
    detections = make_detections(
        [("a", t, s) for t, s in zip(rng.integers(0, 500, 200) / 1000.0, rng.random(200))]
    )
    matched = match_detections(calls, detections)
    kept = detections["score"].to_numpy() >= 0.6
    alone = match_detections(calls, detections[kept].reset_index(drop=True))
    assert alone.tolist() == matched[kept].tolist()


# --------------------------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------------------------

# Three events in one recording at 1, 2 and 3 s, four detections:
#   score 0.9 at 1.002 -> TP (event 1)
#   score 0.8 at 5.000 -> FP (nothing there)
#   score 0.7 at 2.001 -> TP (event 2)
#   score 0.6 at 1.004 -> FP (event 1 already taken: a duplicate)
# Event 3 is never detected. Ranked: TP, FP, TP, FP.
#   precision 1, 1/2, 2/3, 1/2;  recall 1/3, 1/3, 2/3, 2/3 (of 3 events, the missed one too)
#   AP = (1/3 - 0)(1) + 0 (1/2) + (2/3 - 1/3)(2/3) + 0 (1/2) = 1/3 + 2/9 = 5/9 = 0.5556
#   The reference system's mean of the precisions: (1 + 1/2 + 2/3 + 1/2) / 4 = 2/3 = 0.6667.
HAND_CALLS = make_calls([("a", 1.0, 1), ("a", 2.0, 1), ("a", 3.0, 1)])
HAND_DETECTIONS = make_detections(
    [("a", 1.002, 0.9), ("a", 5.0, 0.8), ("a", 2.001, 0.7), ("a", 1.004, 0.6)]
)


def test_detection_average_precision_by_hand():
    curve = detection_average_precision(HAND_CALLS, HAND_DETECTIONS)
    assert curve.average_precision == pytest.approx(5 / 9)
    assert curve.precision == pytest.approx([1, 1 / 2, 2 / 3, 1 / 2])
    assert curve.recall == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert curve.thresholds == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert curve.n_positives == 3


def test_mean_of_precisions_is_not_the_average_precision():
    # The reference system's defect: on the hand case the mean of the precisions is 2/3, the AP 5/9.
    curve = detection_average_precision(HAND_CALLS, HAND_DETECTIONS)
    mean_of_precisions = float(np.mean(curve.precision))
    assert mean_of_precisions == pytest.approx(2 / 3)
    assert abs(mean_of_precisions - curve.average_precision) > 0.1
    # Nor is the mean of the per-class precisions at thresholds the mAP. At 0.5, on the
    # matched events: A predicted on e1, e3 (true e1, e2), B on e2, e3 (true e1, e3): both
    # precisions 1/2, their mean 1/2, while the mAP is 11/24 (below).
    calls, detections = per_class_case()
    scores = reference_scores(calls, detections, CLASSES, {"detection": 0.0})
    assert scores["classification"]["macro_precision"] == pytest.approx(1 / 2)
    result = class_average_precision(calls, detections, CLASSES)
    assert result.mean_average_precision == pytest.approx(11 / 24)


def test_average_precision_agrees_with_scikit_learn():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 20, 300) / 20.0  # with ties
    is_true = rng.random(300) < 0.3
    curve = precision_recall_curve(scores, is_true)
    assert curve.average_precision == pytest.approx(average_precision_score(is_true, scores))
    # Positives never predicted scale the recall: AP becomes AP * found / all.
    missed = 50
    with_misses = precision_recall_curve(scores, is_true, is_true.sum() + missed)
    assert with_misses.average_precision == pytest.approx(
        curve.average_precision * is_true.sum() / (is_true.sum() + missed)
    )


def test_tied_scores_enter_together():
    # One TP and one FP at the same score: one point, precision 1/2, AP 1/2.
    curve = precision_recall_curve([0.5, 0.5], [True, False])
    assert curve.precision.tolist() == [0.5]
    assert curve.average_precision == pytest.approx(0.5)


def per_class_case():
    """Events: e1 (1 s) {A, B}, e2 (2 s) {A}, e3 (3 s) {B}, e4 (4 s) {A} never detected.
    C has no call. Detections: d1, d2, d3 match e1, e2, e3; d4 (6 s) matches nothing."""
    calls = make_calls(
        [("a", 1.0, 1), ("a", 1.0, 2), ("a", 2.0, 1), ("a", 3.0, 2), ("a", 4.0, 1)]
    )
    detections = make_detections(
        [
            #  time  score  pA   pB   pC
            ("a", 1.0, 0.9, 0.9, 0.4, 0.1),  # d1
            ("a", 2.0, 0.8, 0.3, 0.8, 0.1),  # d2
            ("a", 3.0, 0.7, 0.6, 0.7, 0.1),  # d3
            ("a", 6.0, 0.6, 0.5, 0.9, 0.1),  # d4
        ],
        CLASSES,
    )
    return calls, detections


def test_class_average_precision_by_hand():
    # A: positives e1, e2, e4 (3). By pA: d1 .9 T, d3 .6 F, d4 .5 F, d2 .3 T.
    #    P 1, 1/2, 1/3, 1/2; R 1/3, 1/3, 1/3, 2/3 -> AP = 1/3 * 1 + 1/3 * 1/2 = 1/2.
    # B: positives e1, e3 (2). By pB: d4 .9 F, d2 .8 F, d3 .7 T, d1 .4 T.
    #    P 0, 0, 1/3, 1/2; R 0, 0, 1/2, 1 -> AP = 1/2 * 1/3 + 1/2 * 1/2 = 5/12.
    # C: no event: AP undefined, left out of the mean. mAP = (1/2 + 5/12) / 2 = 11/24.
    calls, detections = per_class_case()
    result = class_average_precision(calls, detections, CLASSES)
    assert result.per_class["A"].average_precision == pytest.approx(1 / 2)
    assert result.per_class["A"].n_positives == 3
    assert result.per_class["B"].average_precision == pytest.approx(5 / 12)
    assert math.isnan(result.per_class["C"].average_precision)
    assert result.mean_average_precision == pytest.approx(11 / 24)


def test_overlapping_calls_count_once_for_detection():
    calls, detections = per_class_case()
    # 4 events (not 5 calls): d1, d2, d3 find 3 of them.
    curve = detection_average_precision(calls, detections)
    assert curve.n_positives == 4
    # Ranked by score: T, T, T, F -> AP = 3 * (1/4 * 1) = 3/4.
    assert curve.average_precision == pytest.approx(3 / 4)


# --------------------------------------------------------------------------------------------
# Scores at thresholds
# --------------------------------------------------------------------------------------------

# Thresholds: detection 0.65 drops d4; A 0.55, B 0.75, C 0.5.
# Predicted sets: d1 (e1) {A}, d2 (e2) {B}, d3 (e3) {A}. True: e1 {A, B}, e2 {A}, e3 {B}.
HAND_THRESHOLDS = {"detection": 0.65, "A": 0.55, "B": 0.75, "C": 0.5}


def test_reference_scores_by_hand():
    calls, detections = per_class_case()
    scores = reference_scores(calls, detections, CLASSES, HAND_THRESHOLDS)
    detection = scores["detection"]
    # 3 kept detections all matched; e4 missed.
    assert (detection["tp"], detection["fp"], detection["fn"]) == (3, 0, 1)
    assert detection["precision"] == pytest.approx(1.0)
    assert detection["recall"] == pytest.approx(3 / 4)
    assert detection["f1"] == pytest.approx(6 / 7)

    classification = scores["classification"]
    assert classification["n_events"] == 3
    a, b, c = (classification["per_class"][name] for name in CLASSES)
    # A: true e1, e2; predicted e1, e3 -> TP 1, FP 1, FN 1.
    assert (a["tp"], a["fp"], a["fn"], a["support"]) == (1, 1, 1, 2)
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    # B: true e1, e3; predicted e2 -> TP 0, FP 1, FN 2.
    assert (b["tp"], b["fp"], b["fn"], b["support"]) == (0, 1, 2, 2)
    assert (b["precision"], b["recall"], b["f1"]) == (0.0, 0.0, 0.0)
    # C: never true, never predicted: undefined, and not averaged.
    assert c["support"] == 0 and math.isnan(c["precision"]) and math.isnan(c["f1"])
    assert classification["macro_precision"] == pytest.approx(0.25)
    assert classification["macro_recall"] == pytest.approx(0.25)
    assert classification["macro_f1"] == pytest.approx(0.25)
    # Micro: TP 1, FP 2, FN 3.
    assert classification["micro_precision"] == pytest.approx(1 / 3)
    assert classification["micro_recall"] == pytest.approx(1 / 4)
    assert classification["micro_f1"] == pytest.approx(2 / 7)


def test_multilabel_scores_by_hand_and_against_scikit_learn():
    calls, detections = per_class_case()
    scores = multilabel_scores(calls, detections, CLASSES, HAND_THRESHOLDS)
    truth = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0]])
    predicted = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    everything = scores["all"]
    assert everything["n_events"] == 3
    # Wrong cells: e1 B; e2 A, B; e3 A, B -> 5 of 9.
    assert everything["hamming_loss"] == pytest.approx(5 / 9)
    assert everything["micro_f1"] == pytest.approx(2 / 7)
    assert everything["macro_f1"] == pytest.approx((0.5 + 0.0) / 2)
    assert everything["exact_match"] == 0.0
    assert everything["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    assert everything["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    # Macro over the classes present (A, B), as scikit-learn with labels=[0, 1].
    assert everything["macro_f1"] == pytest.approx(
        f1_score(truth, predicted, average="macro", labels=[0, 1], zero_division=0)
    )
    # Overlapping calls: e1 only, true {A, B}, predicted {A}.
    overlapping = scores["overlapping"]
    assert overlapping["n_events"] == 1
    assert overlapping["hamming_loss"] == pytest.approx(1 / 3)
    assert overlapping["micro_f1"] == pytest.approx(2 / 3)
    assert overlapping["macro_f1"] == pytest.approx((1.0 + 0.0) / 2)
    assert overlapping["micro_f1"] == pytest.approx(
        f1_score(truth[:1], predicted[:1], average="micro")
    )


def test_multilabel_scores_against_scikit_learn_on_random_sets():
    rng = np.random.default_rng(5)
    n, classes = 200, ["A", "B", "C", "D"]
    truth = rng.random((n, 4)) < 0.35
    truth[truth.sum(axis=1) == 0, 0] = True
    probability = np.clip(truth * 0.4 + rng.random((n, 4)) * 0.6, 0, 1)
    calls = make_calls(
        [("r", i / 10.0, k + 1) for i in range(n) for k in range(4) if truth[i, k]]
    )
    detections = make_detections(
        [("r", i / 10.0, 0.9, *probability[i]) for i in range(n)], classes
    )
    thresholds = {"detection": 0.5, "A": 0.5, "B": 0.6, "C": 0.4, "D": 0.7}
    scores = multilabel_scores(calls, detections, classes, thresholds)["all"]
    predicted = probability >= np.array([0.5, 0.6, 0.4, 0.7])
    assert scores["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    assert scores["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    present = list(np.flatnonzero(truth.any(axis=0)))
    assert scores["macro_f1"] == pytest.approx(
        f1_score(truth, predicted, average="macro", labels=present, zero_division=0)
    )


def test_end_to_end_scores_by_hand():
    calls, detections = per_class_case()
    scores = end_to_end_scores(calls, detections, CLASSES, HAND_THRESHOLDS)
    # Reported: d1 A (e1 has A: TP), d2 B (e2 lacks B: FP), d3 A (e3 lacks A: FP).
    # A: TP 1, FP 1, FN 2 (e2, e4); B: TP 0, FP 1, FN 2 (e1, e3).
    a, b = scores["per_class"]["A"], scores["per_class"]["B"]
    assert (a["tp"], a["fp"], a["fn"]) == (1, 1, 2)
    assert (b["tp"], b["fp"], b["fn"]) == (0, 1, 2)
    assert a["f1"] == pytest.approx(2 / 5)
    assert scores["micro_f1"] == pytest.approx(2 / (2 + 2 + 4))


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------


def separable_case():
    """Events 1..40 s, odd ones A, even ones B, each found by one detection; 20 false
    detections between them. Detection: true scores in [0.62, 0.9], false in [0.3, 0.58],
    so only the grid value 0.6 separates them. A's events: pA in [0.72, 0.9], pB in
    [0.1, 0.38]; B's: pB in [0.42, 0.9], pA in [0.1, 0.68]: only 0.7 separates A, only 0.4 B.
    The false detections name both classes (0.95), so a low detection threshold costs."""
    rng = np.random.default_rng(2)
    calls, rows = [], []
    for i in range(1, 41):
        is_a = i % 2 == 1
        calls.append(("r", float(i), 1 if is_a else 2))
        score = rng.choice([0.62, 0.75, 0.9])
        if is_a:
            probability = (rng.choice([0.72, 0.8, 0.9]), rng.choice([0.1, 0.25, 0.38]))
        else:
            probability = (rng.choice([0.1, 0.5, 0.68]), rng.choice([0.42, 0.6, 0.9]))
        rows.append(("r", float(i) + 0.002, score, *probability))
    for i in range(20):
        rows.append(("r", i + 1.5, rng.choice([0.3, 0.45, 0.58]), 0.95, 0.95))
    return make_calls(calls), make_detections(rows, ["A", "B"])


@pytest.mark.parametrize("objective", ["macro", "micro"])
def test_tune_thresholds_finds_the_separating_thresholds(objective):
    calls, detections = separable_case()
    thresholds = tune_thresholds(calls, detections, ["A", "B"], objective=objective)
    assert thresholds == pytest.approx({"detection": 0.6, "A": 0.7, "B": 0.4})
    assert all(type(v) is float for v in thresholds.values())
    scores = end_to_end_scores(calls, detections, ["A", "B"], thresholds)
    assert scores["micro_f1"] == pytest.approx(1.0)
    # Deterministic.
    assert tune_thresholds(calls, detections, ["A", "B"], objective=objective) == thresholds


def test_tune_thresholds_without_classes_tunes_the_detection():
    calls, detections = separable_case()
    calls = calls.drop(columns="class")
    thresholds = tune_thresholds(calls, detections[["recording", "time", "score"]], [])
    assert thresholds == pytest.approx({"detection": 0.6})


# --------------------------------------------------------------------------------------------
# Empty inputs, validation, output
# --------------------------------------------------------------------------------------------

EMPTY_CALLS = make_calls([])
EMPTY_DETECTIONS = make_detections([], CLASSES)


@pytest.mark.parametrize(
    "calls, detections",
    [
        (EMPTY_CALLS, EMPTY_DETECTIONS),
        (pd.DataFrame(), pd.DataFrame()),
        (per_class_case()[0], EMPTY_DETECTIONS),
        (EMPTY_CALLS, per_class_case()[1]),
    ],
    ids=["both-empty", "no-columns", "no-detections", "no-calls"],
)
def test_empty_inputs_give_defined_scores_without_warnings(calls, detections):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate(calls, detections, CLASSES, HAND_THRESHOLDS)
        thresholds = tune_thresholds(calls, detections, CLASSES)
        report = format_report(result)
    json.dumps(result, allow_nan=False)
    assert set(thresholds) == {"detection", *CLASSES}
    assert "A" in report
    n_events = len(call_events(calls))
    if n_events and len(detections) == 0:
        assert result["detection"]["ap"] == 0.0
        assert result["detection"]["recall"] == 0.0
        assert result["detection"]["fn"] == n_events
    else:
        assert result["detection"]["ap"] is None  # no event: no recall
    if len(detections) and not n_events:
        assert result["detection"]["precision"] == 0.0
        kept = detections["score"] >= HAND_THRESHOLDS["detection"]
        assert result["detection"]["fp"] == int(kept.sum())
        assert result["detection"]["tp"] == 0


def test_evaluate_is_json_ready_and_complete():
    calls, detections = per_class_case()
    result = evaluate(calls, detections, CLASSES, HAND_THRESHOLDS)
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    detection = result["detection"]
    assert {"ap", "precision", "recall", "f1", "tp", "fp", "fn"} <= set(detection)
    assert detection["ap"] == pytest.approx(3 / 4)
    classification = result["classification"]
    assert classification["map"] == pytest.approx(11 / 24)
    assert {"map", "per_class", "macro_f1", "micro_f1"} <= set(classification)
    for name in CLASSES:
        assert {"ap", "precision", "recall", "f1", "support"} <= set(
            classification["per_class"][name]
        )
    assert classification["per_class"]["C"]["ap"] is None
    assert classification["per_class"]["A"]["n_events"] == 3
    assert result["multilabel"]["all"]["hamming_loss"] == pytest.approx(5 / 9)
    assert result["thresholds"] == HAND_THRESHOLDS
    assert result["tolerance"] == 0.010

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        else:
            assert value is None or type(value) in (int, float, str, bool, list), value

    walk(result)


def test_format_report_is_an_aligned_table():
    calls, detections = per_class_case()
    report = format_report(evaluate(calls, detections, CLASSES, HAND_THRESHOLDS))
    lines = report.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("class"))
    table = lines[header : header + 2 + len(CLASSES) + 2]
    assert [line.split()[0] for line in table[2 : 2 + len(CLASSES)]] == CLASSES
    # The AP column ends at the same place on every row.
    column_end = table[0].index("AP") + 2
    assert table[2][column_end - 5 : column_end] == "0.500"  # A's AP
    assert table[3][column_end - 5 : column_end] == "0.417"  # B's AP
    assert "0.458" in table[2 + len(CLASSES)]  # the mAP on the macro row


def test_bad_inputs_are_refused_with_a_clear_message():
    calls, detections = per_class_case()
    with pytest.raises(ValueError, match="outside 1..2"):
        class_average_precision(calls.assign(**{"class": 3}), detections, ["A", "B"])
    with pytest.raises(ValueError, match="prob_D"):
        class_average_precision(calls, detections, [*CLASSES, "D"])
    with pytest.raises(ValueError, match="unknown class"):
        reference_scores(calls, detections, CLASSES, {"Z": 0.5})
    with pytest.raises(ValueError, match="finite"):
        match_detections(calls, detections.assign(time=np.nan))
    with pytest.raises(ValueError, match="tolerance"):
        match_detections(calls, detections, tolerance=-0.001)
    with pytest.raises(ValueError, match="lack the column"):
        match_detections(calls, detections.drop(columns="score"))


def test_top1_accuracy_by_hand():
    """Three events matched (one with two classes), one missed; the most probable class of the
    detection counts as right when it is one of its event's classes."""
    calls = make_calls([("r", 0.10, 1), ("r", 0.50, 2), ("r", 0.50, 3), ("r", 0.90, 2), ("r", 2.0, 1)])
    detections = make_detections(
        [("r", 0.101, 0.9, 0.8, 0.1, 0.1),   # event 0 (A): right
         ("r", 0.502, 0.8, 0.1, 0.2, 0.7),   # event 1 (B+C): C is one of them, right
         ("r", 0.905, 0.7, 0.6, 0.3, 0.1),   # event 2 (B): A, wrong
         ("r", 1.500, 0.6, 0.1, 0.8, 0.1)],  # no event: not counted
        CLASSES,
    )  # fmt: skip
    result = top1_accuracy(calls, detections, CLASSES)
    assert result["all"] == pytest.approx(2 / 3) and result["n_events"] == 3
    assert result["per_class"] == {"A": 1.0, "B": pytest.approx(0.5), "C": 1.0}
