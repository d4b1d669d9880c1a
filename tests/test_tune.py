"""Hyperparameter search: the reference system's spaces, parameter files of the best point, and a TPE search
whose JSON trials survive an interruption and resume where it stopped."""

from __future__ import annotations

import csv
import json
import math
import pickle
import time

import numpy as np
import pytest
from hyperopt import hp
from hyperopt.pyll.stochastic import sample

from pipeline.model.params import COLUMNS, ParamsError, list_rows, load_params
from pipeline.tuning import (
    TuneSettings,
    TuningError,
    hold_out_recordings,
    parse_budget,
    search_hyperparameters,
    search_space,
    space_family,
    to_params,
    tuning_summary,
    write_params_csv,
)

LEARNING_RATE = {"learning_rate": hp.loguniform("learning_rate", math.log(1e-6), math.log(1e-1))}


def log_distance(point) -> float:
    """An analytic objective: the squared distance to 1e-3 in log10 space."""
    return (math.log10(point["learning_rate"]) + 3) ** 2


def stored(path) -> dict:
    return json.loads(path.read_text())


# --- budgets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("2h", 7200), ("30m", 1800), ("90s", 90), ("1h30m", 5400), ("3600", 3600), ("1.5h", 5400),
     (" 2H ", 7200), ("1h0m30s", 3630), ("0.5", 0.5), ("2 hours", 7200), ("1 h 30 min", 5400)],
)  # fmt: skip
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "2x", "h", "-5", "0", "0m", "-1h", "inf", "nan", "2 parsecs"])
def test_parse_budget_refuses_with_one_line(text):
    with pytest.raises(ValueError) as error:
        parse_budget(text)
    assert "\n" not in str(error.value) and repr(text) in str(error.value)


# --- search spaces -----------------------------------------------------------------------------


def samples(stage: str, n: int = 300) -> list[dict]:
    rng = np.random.default_rng(3)
    return [to_params(stage, sample(search_space(stage), rng=rng)) for _ in range(n)]


def assert_whole(rows, column, allowed):
    values = [row[column] for row in rows]
    assert all(type(v) is int for v in values), column
    assert set(values) == set(allowed), column  # every value, the ends included


def assert_real(rows, column, low, high):
    values = [row[column] for row in rows]
    assert all(type(v) is float and low <= v <= high for v in values), column


def test_cnn_space_is_the_seeds():
    rows = samples("cnn")
    assert set(rows[0]) == {
        "conv_layers", "filters", "kernel", "dense_layers", "dense_units", "dropout_conv", "dropout_dense",
        "learning_rate", "beta_1", "beta_2", "batch_size",
    }  # fmt: skip
    assert set(rows[0]) <= set(COLUMNS)
    assert_whole(rows, "conv_layers", {2, 3, 4})  # 1-3 extra blocks after the first
    assert_whole(rows, "dense_layers", range(1, 5))
    assert_whole(rows, "filters", range(16, 65, 8))
    assert_whole(rows, "kernel", range(2, 6))
    assert_whole(rows, "dense_units", range(64, 513, 64))
    assert_whole(rows, "batch_size", range(64, 513, 64))
    assert_real(rows, "dropout_conv", 0.3, 0.7)
    assert all(row["dropout_conv"] == row["dropout_dense"] for row in rows)
    assert_real(rows, "learning_rate", 1e-5, 1e-2)
    assert {row["beta_1"] for row in rows} == {0.8, 0.9, 0.95}
    assert {row["beta_2"] for row in rows} == {0.95, 0.999}
    rates = np.log10([row["learning_rate"] for row in rows])
    assert rates.min() < -4 and rates.max() > -3  # log-uniform, not crowded at the top


def test_resnet_space_tunes_training_only():
    rows = samples("resnet_8")
    assert set(rows[0]) == {"learning_rate", "beta_1", "beta_2", "batch_size", "l2"}
    assert_real(rows, "learning_rate", 1e-5, 1e-2)
    assert_real(rows, "l2", 1e-5, 1e-2)
    assert_whole(rows, "batch_size", range(64, 513, 64))
    assert {row["beta_1"] for row in rows} == {0.8, 0.9, 0.95}


def test_xgboost_space_is_the_seeds():
    rows = samples("xgboost")
    assert set(rows[0]) == {"eta", "max_depth", "n_estimators", "subsample", "min_child_weight"}
    assert_real(rows, "eta", 1e-4, 0.3)
    assert_whole(rows, "max_depth", range(3, 16))
    assert_whole(rows, "n_estimators", {100, 500, 1000, 2000})
    assert_real(rows, "subsample", 0.7, 1.0)
    assert_real(rows, "min_child_weight", 1.0, 3.0)


def test_every_packaged_row_has_a_space_with_its_own_labels():
    from hyperopt.base import Domain

    for row in list_rows():
        assert space_family(row) in ("cnn", "resnet", "xgboost")
    # two rows searched together: labels are prefixed by the row, so they do not collide
    domain = Domain(lambda point: 0.0, {"cnn_2": search_space("cnn_2"), "cnn_7": search_space("cnn_7")})
    assert "cnn_2.learning_rate" in domain.params and "cnn_7.learning_rate" in domain.params
    with pytest.raises(ValueError, match="no search space"):
        search_space("svm")
    with pytest.raises(ValueError, match="lacks"):
        to_params("cnn", {"learning_rate": 1e-3})


def test_the_largest_cnn_of_the_space_builds():
    from pipeline.model.registry import build_networks

    largest = {"extra_conv_layers": 3.0, "dense_layers": 4.0, "filters": 64.0, "kernel": 5.0,
               "dense_units": 512.0, "dropout": 0.7, "learning_rate": 1e-2, "beta_1": 0.95,
               "beta_2": 0.999, "batch_size": 512.0}  # fmt: skip
    params = {**load_params("cnn_8"), **to_params("cnn_8", largest)}
    network = build_networks("cnn8", 7, {"cnn_8": params})["cnn_8"]
    assert network.get_layer("embedding").output.shape[-1] == 512
    assert network.get_layer("conv_4") is not None


# --- the search --------------------------------------------------------------------------------


def test_trials_are_written_after_every_evaluation(tmp_path):
    path = tmp_path / "trials.json"
    seen = []

    def objective(point):
        seen.append(len(stored(path)["trials"]) if path.exists() else 0)
        return log_distance(point)

    result = search_hyperparameters(objective, LEARNING_RATE, path, budget_s=60, max_trials=10, startup_trials=3)
    assert seen == list(range(10))
    record = stored(path)
    trials = record["trials"]
    assert [t["tid"] for t in trials] == list(range(10))
    assert all(t["status"] == "ok" and isinstance(t["loss"], float) and t["duration_s"] >= 0 for t in trials)
    assert all(set(t["vals"]) == {"learning_rate"} and len(t["vals"]["learning_rate"]) == 1 for t in trials)
    best = min(trials, key=lambda t: t["loss"])
    assert result.n_trials == 10 and result.best_loss == best["loss"] and result.best_tid == best["tid"]
    assert result.best_point == {"learning_rate": best["vals"]["learning_rate"][0]}
    assert record["best"] == {"tid": best["tid"], "loss": best["loss"]}
    assert record["elapsed_s"] == pytest.approx(result.elapsed_s)
    assert tuning_summary(path).best_loss == result.best_loss


def test_tpe_improves_on_random_points(tmp_path):
    result = search_hyperparameters(log_distance, LEARNING_RATE, tmp_path / "t.json", budget_s=60, max_trials=40, startup_trials=5)
    losses = [t["loss"] for t in stored(tmp_path / "t.json")["trials"]]
    assert np.median(losses[20:]) < np.median(losses[:5])
    assert result.best_loss < 0.05


class InterruptAt:
    """An objective that stops like Ctrl-C at its ``n``-th call and records the points."""

    def __init__(self, n: int | None = None):
        self.n = n
        self.points = []

    def __call__(self, point):
        if len(self.points) + 1 == self.n:
            raise KeyboardInterrupt
        self.points.append(point["learning_rate"])
        return log_distance(point)


def test_an_interrupted_search_resumes_where_it_stopped(tmp_path):
    path = tmp_path / "trials.json"
    first = InterruptAt(4)
    with pytest.raises(KeyboardInterrupt):
        search_hyperparameters(first, LEARNING_RATE, path, budget_s=60, max_trials=6, startup_trials=2)
    record = stored(path)
    assert [t["tid"] for t in record["trials"]] == [0, 1, 2]
    assert all(t["status"] == "ok" for t in record["trials"])
    assert record["elapsed_s"] > 0

    second = InterruptAt()
    result = search_hyperparameters(second, LEARNING_RATE, path, budget_s=60, max_trials=6, startup_trials=2)
    assert len(second.points) == 3 and result.n_trials == 6
    trials = stored(path)["trials"]
    assert [t["tid"] for t in trials] == list(range(6))
    assert not set(second.points) & set(first.points)

    # the same search never interrupted suggests the same six points...
    whole = InterruptAt()
    search_hyperparameters(whole, LEARNING_RATE, tmp_path / "whole.json", budget_s=60, max_trials=6, startup_trials=2)
    assert whole.points == first.points + second.points

    # ... and TPE's suggestions after the first three depend on their losses
    tampered = dict(record, trials=[dict(t, loss=-t["loss"]) for t in record["trials"]])
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    other = InterruptAt()
    search_hyperparameters(other, LEARNING_RATE, tmp_path / "tampered.json", budget_s=60, max_trials=6, startup_trials=2)
    assert len(other.points) == 3 and other.points != second.points


def test_a_failing_evaluation_is_recorded_and_the_search_goes_on(tmp_path):
    calls = []

    def objective(point):
        calls.append(point)
        if len(calls) == 2:
            raise RuntimeError("out of memory\ntraceback lines")
        if len(calls) == 3:
            return float("nan")
        return log_distance(point)

    result = search_hyperparameters(objective, LEARNING_RATE, tmp_path / "t.json", budget_s=60, max_trials=5, startup_trials=2)
    trials = stored(tmp_path / "t.json")["trials"]
    assert len(calls) == 5 and result.n_trials == 5 and result.n_failed == 2
    assert [t["status"] for t in trials] == ["ok", "fail", "fail", "ok", "ok"]
    assert trials[1]["reason"] == "RuntimeError: out of memory" and trials[1]["loss"] is None
    assert "nan" in trials[2]["reason"]
    assert result.best_loss == min(t["loss"] for t in trials if t["status"] == "ok")


def test_failures_in_a_row_stop_the_search(tmp_path):
    def objective(point):
        raise ValueError("no training window")

    result = search_hyperparameters(objective, LEARNING_RATE, tmp_path / "t.json", budget_s=60, stop_after_failures=3)
    assert result.n_trials == 3 and result.best_point is None and result.best_loss == math.inf


def test_trials_are_json_never_pickle(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("dump", "dumps"):
        monkeypatch.setattr(pickle, name, refuse)
    search_hyperparameters(log_distance, LEARNING_RATE, tmp_path / "trials.json", budget_s=60, max_trials=4, startup_trials=2)
    search_hyperparameters(log_distance, LEARNING_RATE, tmp_path / "trials.json", budget_s=60, max_trials=6, startup_trials=2)
    assert [p.name for p in tmp_path.iterdir()] == ["trials.json"]  # no temporary left behind
    record = json.loads((tmp_path / "trials.json").read_text())
    assert record["format"] == "batml-tuning-trials" and len(record["trials"]) == 6


def test_the_budget_stops_the_search_and_counts_every_run(tmp_path):
    def slow(point):
        time.sleep(0.2)
        return log_distance(point)

    path = tmp_path / "t.json"
    result = search_hyperparameters(slow, LEARNING_RATE, path, budget_s=1.0, max_trials=50)
    assert 1 <= result.n_trials < 50
    assert result.elapsed_s >= 1.0
    again = search_hyperparameters(slow, LEARNING_RATE, path, budget_s=1.0, max_trials=50)
    assert again.n_trials == result.n_trials  # the budget was spent by the first run


def test_resuming_another_search_is_refused(tmp_path):
    path = tmp_path / "t.json"
    search_hyperparameters(log_distance, LEARNING_RATE, path, budget_s=60, max_trials=2, context={"model_type": "cnn8"})
    with pytest.raises(TuningError, match="another search space"):
        search_hyperparameters(lambda p: 0.0, {"x": hp.uniform("x", 0, 1)}, path, budget_s=60, max_trials=3)
    with pytest.raises(TuningError, match="resnet8"):
        search_hyperparameters(log_distance, LEARNING_RATE, path, budget_s=60, max_trials=3, context={"model_type": "resnet8"})
    path.write_text("{not json")
    with pytest.raises(TuningError, match="not a JSON trials file"):
        search_hyperparameters(log_distance, LEARNING_RATE, path, budget_s=60, max_trials=3)
    with pytest.raises(ValueError, match="budget"):
        search_hyperparameters(log_distance, LEARNING_RATE, tmp_path / "u.json", budget_s=0)


# --- parameter files -----------------------------------------------------------------------------


def header(path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def packaged(name: str):
    from importlib import resources

    return resources.files("pipeline.model").joinpath("params", name)


def test_best_networks_load_back_with_the_untuned_rows_and_columns_kept(tmp_path):
    rng = np.random.default_rng(5)
    tuned = {row: to_params(row, sample(search_space(row), rng=rng)) for row in ("cnn_2", "cnn_7")}
    path = write_params_csv(tmp_path / "best_networks.csv", tuned)
    assert header(path) == header(packaged("networks.csv"))
    assert list_rows(path) == list_rows(packaged("networks.csv"))
    for row, values in tuned.items():
        loaded = load_params(row, path)
        assert loaded == {**load_params(row), **values}
        assert all(type(loaded[c]) is COLUMNS[c] for c in loaded)
    for row in ("cnn_8", "resnet_8", "resnet_2", "resnet_7"):
        assert load_params(row, path) == load_params(row)


def test_best_xgboost_loads_back(tmp_path):
    point = sample(search_space("xgboost_spectrogram"), rng=np.random.default_rng(6))
    values = to_params("xgboost_spectrogram", point)
    path = write_params_csv(tmp_path / "best_xgboost.csv", {"xgboost_spectrogram": values})
    assert header(path) == header(packaged("xgboost.csv"))
    assert load_params("xgboost_spectrogram", path) == {**load_params("xgboost_spectrogram"), **values}


def test_a_users_file_gives_the_untuned_values(tmp_path):
    mine = tmp_path / "mine.csv"
    text = packaged("networks.csv").read_text()
    mine.write_text(text.replace("cnn_8,3,48,4,2,1,320,", "cnn_8,3,32,4,2,1,320,"))
    path = write_params_csv(tmp_path / "best.csv", {"cnn_8": {"learning_rate": 0.002}}, defaults=mine)
    assert load_params("cnn_8", path) == {**load_params("cnn_8", mine), "learning_rate": 0.002}
    assert load_params("cnn_8", path)["filters"] == 32


def test_unwritable_parameters_are_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "best.csv"
    with pytest.raises(ValueError, match="different files"):
        write_params_csv(out, {"cnn_8": {}, "xgboost_spectrogram": {}})
    with pytest.raises(ValueError, match="none of"):
        write_params_csv(out, {"svm_1": {}})
    with pytest.raises(ValueError, match="filters"):
        write_params_csv(out, {"cnn_8": {"filters": 12.5}})
    with pytest.raises(ParamsError, match="dropout_conv"):
        write_params_csv(out, {"cnn_8": {"dropout_conv": 1.5}})
    assert list(tmp_path.iterdir()) == []


# --- tuning a model ------------------------------------------------------------------------------


def test_settings_stage_follows_the_model():
    assert TuneSettings("cnn8", budget_s=60).stage == "network"
    assert TuneSettings("cnn2", budget_s=60).tuned_rows == ("cnn_2", "cnn_7")
    hybrid = TuneSettings("hybrid_cnn_xgboost", budget_s=60)
    assert hybrid.stage == "both" and hybrid.tuned_rows == ("cnn_8", "xgboost_spectrogram")
    assert TuneSettings("hybrid_resnet_xgboost", 60, stage="xgboost").tuned_rows == ("xgboost_spectrogram",)
    with pytest.raises(TuningError, match="no XGBoost"):
        TuneSettings("cnn8", budget_s=60, stage="xgboost")
    with pytest.raises(TuningError, match="unknown model"):
        TuneSettings("svm", budget_s=60)
    with pytest.raises(TuningError, match="budget"):
        TuneSettings("cnn8", budget_s=0)


def test_held_out_recordings_hold_calls():
    from pipeline.io.annotations import RecordingCalls

    def recording(name, n_calls):
        return RecordingCalls(file=name, duration=5.0, positions=np.arange(n_calls, dtype=float),
                              classes=np.ones(n_calls, np.int64))  # fmt: skip

    recordings = [recording(f"r{i}", i % 3) for i in range(10)]
    fit, held_out = hold_out_recordings(recordings, 0.2, seed=0)
    assert len(fit) + len(held_out) == 10 and not {r.file for r in fit} & {r.file for r in held_out}
    assert any(len(r.positions) for r in held_out) and any(len(r.positions) for r in fit)
    assert hold_out_recordings(recordings, 0.2, seed=0)[1] == held_out
    with pytest.raises(TuningError, match="two training recordings with calls"):
        hold_out_recordings([recording("a", 2), recording("b", 0)], 0.2, seed=0)


@pytest.mark.slow
def test_tune_model_two_trials_of_cnn8(tmp_path, client):
    from pipeline.simulation import simulate_archive
    from pipeline.tuning import tune_model

    archive = simulate_archive(tmp_path / "audio", minutes=0.5, seed=12, empty_fraction=0.2, test_fraction=0.4)
    out = tmp_path / "tuning"
    settings = TuneSettings("cnn8", budget_s=600, max_trials=2, epochs=1, seed=1)
    result = tune_model(archive.annotations_npz, archive.root, out, settings, client=client, progress=False)
    assert result.n_trials == 2 and 0 <= result.best_loss <= 1
    record = stored(out / "trials.json")
    assert record["context"]["model_type"] == "cnn8" and len(record["trials"]) == 2
    assert all(t["status"] == "ok" for t in record["trials"]), [t["reason"] for t in record["trials"]]
    best = load_params("cnn_8", out / "best_networks.csv")
    assert best == {**load_params("cnn_8"), **to_params("cnn_8", result.best_point["cnn_8"])}
    assert sorted(p.name for p in out.iterdir()) == ["best_networks.csv", "cube.zarr", "trials.json"]
