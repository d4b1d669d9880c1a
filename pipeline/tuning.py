"""Hyperparameter search with hyperopt's TPE: ``batml tune DATASET --audio DIR --out DIR ...``.

The search spaces are the reference system's (:func:`search_space`): a CNN's architecture and training, a
ResNet's training (its architecture is fixed), the hybrids' XGBoost. A point of a space becomes
a ``networks.csv`` or ``xgboost.csv`` row with :func:`to_params`; the best point is written as
such a file (:func:`write_params_csv`), which ``batml train --params FILE`` /
``--xgboost-params FILE`` reads.

:func:`tune` is the search itself, for any objective. Its trials live in a JSON file, rewritten
(atomically) after every evaluation, never a pickle: a file written by one version of the
libraries reads with another, and an interrupted search (Ctrl-C, SIGTERM, a lost node) resumes
where it stopped, TPE modelling the trials already done. The time budget counts the time of
every run on the same file.

:func:`tune_model` is the real thing: every trial trains a model on part of the dataset's
training split and scores it by the area under the detection precision-recall curve on the
rest (the test split is never looked at).

The trials file::

    {"format": "batml-tuning-trials", "version": 1,
     "labels": [...],            # the hyperopt labels of the search space
     "context": {...},           # what is tuned (model, stage, space); checked on resume
     "seed": 0, "elapsed_s": 812.4, "updated": "2026-...Z",
     "best": {"tid": 3, "loss": 0.21} or null,
     "trials": [{"tid": 0, "status": "ok", "loss": 0.25, "reason": null, "duration_s": 201.3,
                 "vals": {"cnn_8.learning_rate": [0.0012], "cnn_8.beta_1": [1], ...},
                 "point": {"cnn_8": {"learning_rate": 0.0012, "beta_1": 0.9, ...}},
                 "finished": "2026-...Z"}, ...]}

``vals`` is hyperopt's own record of a trial (label to a one-element list, empty when a
conditional label is not used; an ``hp.choice`` holds the index of the option); ``point`` is
what the objective received.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np

from pipeline.files import atomic_path, write_text
from pipeline.training import TrainingError

#: The version of the trials file this module writes and reads.
TRIALS_FORMAT = "batml-tuning-trials"
TRIALS_VERSION = 1

#: What :class:`TuneSettings` may tune: the network(s), the hybrid's XGBoost, or both at once.
STAGES = ("network", "xgboost", "both")

#: Random suggestions before TPE models the trials (hyperopt's ``n_startup_jobs``; its
#: default of 20 would spend most of a few hours' budget on random points).
DEFAULT_STARTUP_TRIALS = 10


class TuningError(TrainingError):
    """A search that cannot start or gave nothing usable; one line for the user."""


# --- the reference system's search spaces ----------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter of a search space.

    Parameters
    ----------
    name : str
        Its key in the space's dict: a column of the parameter files, or ``extra_conv_layers``
        (``conv_layers - 1``) or ``dropout`` (both ``dropout_conv`` and ``dropout_dense``).
    kind : {"steps", "log", "uniform", "choice"}
        Evenly spaced values from ``low`` to ``high`` (both included, each equally likely); a
        log-uniform or a uniform real in ``[low, high]``; one of ``options``.
    low, high, step : float
        The range (and spacing, for ``"steps"``).
    options : tuple
        The values of a ``"choice"``.
    """

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    step: float = 1.0
    options: tuple = ()

    def hyperopt(self, label: str):
        """This dimension as a hyperopt expression labelled ``label``."""
        from hyperopt import hp

        if self.kind == "steps":
            # Half a step beyond each end, so that the ends are as likely as the values between.
            half = self.step / 2
            return hp.quniform(label, self.low - half, self.high + half, self.step)
        if self.kind == "log":
            return hp.loguniform(label, math.log(self.low), math.log(self.high))
        if self.kind == "uniform":
            return hp.uniform(label, self.low, self.high)
        return hp.choice(label, list(self.options))

    def describe(self) -> dict:
        """A JSON-ready description (kept in the trials file to refuse resuming another space)."""
        if self.kind == "choice":
            return {"kind": "choice", "options": list(self.options)}
        described = {"kind": self.kind, "low": self.low, "high": self.high}
        if self.kind == "steps":
            described["step"] = self.step
        return described


_ADAM = (
    Dimension("learning_rate", "log", 1e-5, 1e-2),
    Dimension("beta_1", "choice", options=(0.8, 0.9, 0.95)),
    Dimension("beta_2", "choice", options=(0.95, 0.999)),
    Dimension("batch_size", "steps", 64, 512, 64),
)

#: The reference system's spaces by family: ``"cnn"``, ``"resnet"`` (architecture fixed: training only,
#: with L2 weight decay) and ``"xgboost"``.
SEARCH_DIMENSIONS: Mapping[str, tuple[Dimension, ...]] = {
    "cnn": (
        Dimension("extra_conv_layers", "steps", 1, 3, 1),
        Dimension("dense_layers", "steps", 1, 4, 1),
        Dimension("filters", "steps", 16, 64, 8),
        Dimension("kernel", "steps", 2, 5, 1),
        Dimension("dense_units", "steps", 64, 512, 64),
        Dimension("dropout", "uniform", 0.3, 0.7),
        *_ADAM,
    ),
    "resnet": (*_ADAM, Dimension("l2", "log", 1e-5, 1e-2)),
    "xgboost": (
        Dimension("eta", "log", 1e-4, 0.3),
        Dimension("max_depth", "steps", 3, 15, 1),
        Dimension("n_estimators", "choice", options=(100, 500, 1000, 2000)),
        Dimension("subsample", "uniform", 0.7, 1.0),
        Dimension("min_child_weight", "uniform", 1.0, 3.0),
    ),
}


def space_family(row_or_stage: str) -> str:
    """The family of a network row or stage: ``"cnn"``, ``"resnet"`` or ``"xgboost"``.

    Parameters
    ----------
    row_or_stage : str
        A family, a ``networks.csv`` row (``"cnn_8"``, ``"resnet_7"``...) or the booster row
        (``"xgboost_spectrogram"``).

    Raises
    ------
    ValueError
        For anything else.
    """
    for family in SEARCH_DIMENSIONS:
        if row_or_stage == family or str(row_or_stage).startswith(f"{family}_"):
            return family
    raise ValueError(
        f"no search space for {row_or_stage!r}: expected cnn, resnet, xgboost or a row of "
        "networks.csv / xgboost.csv"
    )


def search_space(row_or_stage: str) -> dict:
    """The reference system's hyperopt search space of a network row family or of XGBoost.

    CNN: extra conv layers 1-3 (``conv_layers`` 2-4, as ``conv_layers`` counts every block),
    dense layers 1-4, filters 16-64 step 8, kernel 2-5, dense units 64-512 step 64, dropout
    0.3-0.7, learning rate 1e-5..1e-2 (log), beta1 {0.8, 0.9, 0.95}, beta2 {0.95, 0.999},
    batch 64-512 step 64. ResNet: the same learning rate, betas and batch, and L2 1e-5..1e-2
    (log). XGBoost: eta 1e-4..0.3 (log), depth 3-15, n_estimators {100, 500, 1000, 2000},
    subsample 0.7-1, min_child_weight 1-3. Stepped values are equally likely, ends included.

    Parameters
    ----------
    row_or_stage : str
        ``"cnn"``, ``"resnet"``, ``"xgboost"`` or a row name (``"cnn_8"``,
        ``"xgboost_spectrogram"``...): the family decides the space, the name prefixes the
        hyperopt labels (``"cnn_8.learning_rate"``), so that the spaces of several rows can be
        searched together.

    Returns
    -------
    dict
        Dimension name to hyperopt expression; sample it with
        ``hyperopt.pyll.stochastic.sample`` and turn the sample into a row with
        :func:`to_params`.
    """
    family = space_family(row_or_stage)
    return {d.name: d.hyperopt(f"{row_or_stage}.{d.name}") for d in SEARCH_DIMENSIONS[family]}


def describe_search_space(row_or_stage: str) -> dict:
    """The dimensions of :func:`search_space` as JSON-ready dicts, by name."""
    return {d.name: d.describe() for d in SEARCH_DIMENSIONS[space_family(row_or_stage)]}


def to_params(stage: str, point: Mapping[str, object]) -> dict[str, int | float]:
    """The parameter-file columns of one point of :func:`search_space`.

    Parameters
    ----------
    stage : str
        What :func:`search_space` was given (a family or a row name).
    point : Mapping
        Dimension name to value, as sampled or as the objective receives it.

    Returns
    -------
    dict
        Only the tuned columns (merge them over a row's defaults), typed as
        :data:`pipeline.model.params.COLUMNS` says: ``conv_layers = extra_conv_layers + 1``
        and ``dropout`` set as both ``dropout_conv`` and ``dropout_dense`` for a CNN.

    Raises
    ------
    ValueError
        When ``point`` lacks a dimension or holds a value that is not a number.
    """
    from pipeline.model.params import COLUMNS

    family = space_family(stage)
    names = [d.name for d in SEARCH_DIMENSIONS[family]]
    missing = [name for name in names if name not in point]
    if missing:
        raise ValueError(f"{stage}: the point lacks {', '.join(missing)}")
    values: dict[str, float] = {}
    for name in names:
        value = point[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"{stage}: {name} = {value!r} is not a number")
        values[name] = float(value)
    if family == "cnn":
        values["conv_layers"] = values.pop("extra_conv_layers") + 1
        dropout = values.pop("dropout")
        values["dropout_conv"] = values["dropout_dense"] = dropout
    return {
        column: int(round(value)) if COLUMNS[column] is int else float(value)
        for column, value in values.items()
    }


# --- the best parameters as a parameter file -----------------------------------------------------


def _format_cell(column: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{column} = {value!r} is not a number")
    from pipeline.model.params import COLUMNS

    if COLUMNS[column] is int:
        if float(value) != round(float(value)):
            raise ValueError(f"{column} = {value!r} is not a whole number")
        return str(int(round(float(value))))
    return repr(float(value))


def _raw_rows(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The header and the rows (as text cells) of a parameter CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [column.strip() for column in reader.fieldnames or []]
        rows = {}
        for record in reader:
            cells = {key.strip(): (cell or "").strip() for key, cell in record.items() if key}
            if cells.get("name"):
                rows[cells["name"]] = cells
    return header, rows


def write_params_csv(
    path: str | os.PathLike,
    rows: Mapping[str, Mapping[str, int | float]],
    *,
    defaults: str | os.PathLike | None = None,
) -> Path:
    """Write parameters as a ``networks.csv`` or ``xgboost.csv`` that ``batml train`` reads.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write (replaced atomically).
    rows : Mapping
        Row name to the columns to set (e.g. ``{"cnn_8": to_params("cnn_8", point)}``); all
        rows of one packaged file (``networks.csv`` or ``xgboost.csv``).
    defaults : str or os.PathLike, optional
        A user's parameter file whose rows replace the packaged ones as the values of the rows
        and columns not given.

    Returns
    -------
    Path
        ``path``: the packaged file's columns and rows, in its order, with the given values;
        every row loads with :func:`pipeline.model.params.load_params`.

    Raises
    ------
    ValueError
        When a row is in no packaged file, the rows span both files, or a value is not of its
        column's type; :class:`~pipeline.model.params.ParamsError` when a value is out of
        range. Nothing is written then.
    """
    from pipeline.model.params import PACKAGED_FILES, load_params

    if not rows:
        raise ValueError("no parameter row to write")
    folder = resources.files("pipeline.model").joinpath("params")
    packaged = {name: _raw_rows(Path(str(folder.joinpath(name)))) for name in PACKAGED_FILES}
    homes = {
        row: next((name for name, (_, known) in packaged.items() if row in known), None)
        for row in rows
    }
    unknown = [row for row, home in homes.items() if home is None]
    if unknown:
        raise ValueError(f"row(s) {', '.join(unknown)} are in none of {', '.join(PACKAGED_FILES)}")
    if len(set(homes.values())) > 1:
        raise ValueError(
            f"rows {', '.join(rows)} belong to different files ({', '.join(sorted(set(homes.values())))}); "
            "write one file per packaged file"
        )
    header, table = packaged[next(iter(homes.values()))]
    table = {name: dict(cells) for name, cells in table.items()}
    if defaults is not None:
        for name, cells in _raw_rows(Path(defaults))[1].items():
            if name in table:
                table[name] = {column: cells.get(column, "") for column in header}
    for row, values in rows.items():
        for column, value in values.items():
            if column not in header:
                raise ValueError(f"row {row!r}: column {column!r} is not one of {', '.join(header[1:])}")
            table[row][column] = _format_cell(column, value)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for cells in table.values():
        writer.writerow([cells.get(column, "") for column in header])
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8", newline="")
        for row in table:
            load_params(row, tmp)  # refuse to leave a file that train would refuse
    return path


# --- the search, resumable ----------------------------------------------------------------------


@dataclass
class TuneResult:
    """What a search found.

    Parameters
    ----------
    best_point : dict or None
        The point of the lowest loss, as the objective received it (None when no trial
        succeeded).
    best_loss : float
        Its loss (``inf`` when no trial succeeded).
    n_trials : int
        Trials in the trials file, failed ones included, over every run.
    elapsed_s : float
        Wall-clock seconds of the search over every run.
    best_tid : int or None
        The best trial's id.
    n_failed : int
        Trials whose evaluation failed.
    """

    best_point: dict | None
    best_loss: float
    n_trials: int
    elapsed_s: float
    best_tid: int | None = None
    n_failed: int = 0


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_value(value):
    """A JSON-ready copy of a point (numpy numbers become Python numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _best(trials: list[dict]) -> dict | None:
    done = [t for t in trials if t["status"] == "ok"]
    return min(done, key=lambda t: (t["loss"], t["tid"])) if done else None


def read_trials(trials_path: str | os.PathLike) -> dict:
    """The content of a trials file, checked.

    Raises
    ------
    TuningError
        When the file is not a readable trials file of this version.
    """
    trials_path = Path(trials_path)
    try:
        record = json.loads(trials_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TuningError(f"{trials_path}: cannot read the trials ({error.strerror or error})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise TuningError(f"{trials_path}: not a JSON trials file ({error})") from None
    if not isinstance(record, dict) or record.get("format") != TRIALS_FORMAT:
        raise TuningError(f"{trials_path}: not a batml trials file (no format {TRIALS_FORMAT!r})")
    if record.get("version") != TRIALS_VERSION:
        raise TuningError(
            f"{trials_path}: trials file version {record.get('version')!r}; this batml reads {TRIALS_VERSION}"
        )
    trials = record.get("trials")
    if not isinstance(trials, list) or not all(
        isinstance(t, dict) and isinstance(t.get("tid"), int) and t.get("status") in ("ok", "fail")
        and isinstance(t.get("vals"), dict)
        for t in trials
    ):  # fmt: skip
        raise TuningError(f"{trials_path}: malformed trials (each needs tid, status ok/fail, vals)")
    tids = [t["tid"] for t in trials]
    if len(set(tids)) != len(tids):
        raise TuningError(f"{trials_path}: trial ids appear more than once")
    if any(t["status"] == "ok" and not isinstance(t.get("loss"), (int, float)) for t in trials):
        raise TuningError(f"{trials_path}: a successful trial lacks its loss")
    return record


def tuning_summary(trials_path: str | os.PathLike) -> TuneResult:
    """The best trial of a trials file, without running anything (``best_point`` as stored).

    Parameters
    ----------
    trials_path : str or os.PathLike
        A file that :func:`tune` wrote.

    Returns
    -------
    TuneResult
    """
    record = read_trials(trials_path)
    trials = record["trials"]
    best = _best(trials)
    return TuneResult(
        best_point=best.get("point") if best else None,
        best_loss=float(best["loss"]) if best else math.inf,
        n_trials=len(trials),
        elapsed_s=float(record.get("elapsed_s", 0.0)),
        best_tid=best["tid"] if best else None,
        n_failed=sum(t["status"] == "fail" for t in trials),
    )


def _write_trials(trials_path: Path, record: dict) -> None:
    """Replace the trials file atomically (temporary file, fsync, rename)."""
    best = _best(record["trials"])
    record["best"] = {"tid": best["tid"], "loss": best["loss"]} if best else None
    record["updated"] = _now()
    write_text(trials_path, json.dumps(record, indent=1, allow_nan=False))


def _hyperopt_doc(trial: dict, labels: list[str], cmd) -> dict:
    """A finished hyperopt trial document from a stored trial."""
    from hyperopt import STATUS_FAIL, STATUS_OK
    from hyperopt.base import JOB_STATE_DONE

    tid = trial["tid"]
    vals = {label: list(trial["vals"].get(label, [])) for label in labels}
    if trial["status"] == "ok":
        result = {"status": STATUS_OK, "loss": float(trial["loss"])}
    else:
        result = {"status": STATUS_FAIL, "failure": trial.get("reason")}
    return {
        "state": JOB_STATE_DONE,
        "tid": tid,
        "spec": None,
        "result": result,
        "misc": {
            "tid": tid,
            "cmd": cmd,
            "workdir": None,
            "idxs": {label: [tid] if vals[label] else [] for label in labels},
            "vals": vals,
        },
        "exp_key": None,
        "owner": None,
        "version": 0,
        "book_time": None,
        "refresh_time": None,
    }


def _stored_vals(misc_vals: Mapping[str, list]) -> dict[str, list]:
    return {label: [_json_value(v) for v in values] for label, values in misc_vals.items()}


def search_hyperparameters(
    objective: Callable[[dict], float],
    space,
    trials_path: str | os.PathLike,
    *,
    budget_s: float,
    max_trials: int | None = None,
    seed: int = 0,
    startup_trials: int = DEFAULT_STARTUP_TRIALS,
    context: Mapping | None = None,
    stop_after_failures: int | None = None,
    progress: bool = False,
) -> TuneResult:
    """Minimise ``objective`` over ``space`` with TPE, resumably.

    Every evaluation is written to ``trials_path`` (JSON, atomically) as soon as it ends. When
    the file exists, its trials are given back to hyperopt first, so that TPE goes on from
    them; the trial ids continue theirs. The suggestion for trial ``tid`` is drawn with a
    generator seeded by ``(seed, tid)``: a search interrupted and resumed suggests the same
    points as one never interrupted (for a deterministic objective).

    Parameters
    ----------
    objective : callable
        ``objective(point) -> loss``, lower is better; ``point`` is ``space`` with a value for
        each hyperopt expression. An exception fails the trial (recorded with status
        ``"fail"`` and its one-line reason, an infinite loss for TPE) and the search goes on;
        so does a loss that is not a finite number. ``KeyboardInterrupt`` (and ``SystemExit``)
        stops the search: the trial under way is not recorded (it is evaluated again on
        resume), the time spent is, and the exception goes on.
    space : hyperopt space
        E.g. :func:`search_space` or a dict of them; its labels must be those of the trials
        file when it exists.
    trials_path : str or os.PathLike
        The JSON trials file, created or resumed.
    budget_s : float
        Wall-clock seconds for the whole search, over every run on ``trials_path``; no trial
        starts once they are spent (the trial under way is finished).
    max_trials : int, optional
        Stop when the file holds this many trials (failed ones included).
    seed : int, default 0
        Seed of the suggestions.
    startup_trials : int, default 10
        Random points before TPE models the trials (hyperopt's ``n_startup_jobs``).
    context : Mapping, optional
        JSON-ready description of what is tuned, stored in the file; resuming with another one
        is refused.
    stop_after_failures : int, optional
        Stop after this many failed trials in a row (something is wrong with the data rather
        than with the points).
    progress : bool, default False
        One line per trial on standard error.

    Returns
    -------
    TuneResult

    Raises
    ------
    TuningError
        When the trials file cannot be read or belongs to another search.
    ValueError
        When ``budget_s`` or ``max_trials`` is not positive.
    """
    from hyperopt import space_eval, tpe
    from hyperopt.base import Domain, Trials

    if not (isinstance(budget_s, (int, float)) and budget_s > 0 and math.isfinite(budget_s)):
        raise ValueError(f"the time budget must be a positive number of seconds, not {budget_s!r}")
    if max_trials is not None and (isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1):
        raise ValueError(f"max_trials must be a positive integer, not {max_trials!r}")
    trials_path = Path(trials_path)
    domain = Domain(objective, space)
    labels = sorted(domain.params)
    context = _json_value(dict(context)) if context is not None else None

    if trials_path.exists():
        record = read_trials(trials_path)
        if sorted(record.get("labels", [])) != labels:
            raise TuningError(
                f"{trials_path}: its trials are of another search space (labels "
                f"{', '.join(record.get('labels', [])) or 'none'}); use another output folder"
            )
        if record.get("context") != context:
            raise TuningError(
                f"{trials_path}: its trials were run for {json.dumps(record.get('context'))}, not "
                f"{json.dumps(context)}; use another output folder"
            )
    else:
        trials_path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "format": TRIALS_FORMAT,
            "version": TRIALS_VERSION,
            "labels": labels,
            "context": context,
            "seed": seed,
            "elapsed_s": 0.0,
            "trials": [],
        }
    record["seed"] = seed
    history = Trials()
    history.insert_trial_docs([_hyperopt_doc(t, labels, domain.cmd) for t in record["trials"]])
    history.refresh()
    suggest = partial(tpe.suggest, n_startup_jobs=startup_trials, verbose=False)

    previous_s = float(record.get("elapsed_s", 0.0))
    started = time.monotonic()

    def spent() -> float:
        return previous_s + time.monotonic() - started

    failures_in_a_row = 0
    try:
        _write_trials(trials_path, {**record, "elapsed_s": spent()})
        while spent() < budget_s and (max_trials is None or len(record["trials"]) < max_trials):
            if stop_after_failures is not None and failures_in_a_row >= stop_after_failures:
                break
            tid = max((t["tid"] for t in record["trials"]), default=-1) + 1
            trial_seed = int(np.random.default_rng([seed, tid]).integers(2**31 - 1))
            (doc,) = suggest([tid], domain, history, trial_seed)
            vals = doc["misc"]["vals"]
            assignment = {label: values[0] for label, values in vals.items() if values}
            point = space_eval(space, assignment)
            t0 = time.monotonic()
            reason = None
            loss = None
            try:
                loss = float(objective(point))
                if not math.isfinite(loss):
                    reason = f"the objective returned a loss of {loss}"
            except Exception as error:
                reason = _one_line(error)
            duration = time.monotonic() - t0
            stored = {
                "tid": tid,
                "status": "fail" if reason else "ok",
                "loss": None if reason else loss,
                "reason": reason,
                "duration_s": duration,
                "vals": _stored_vals(vals),
                "point": _json_value(point),
                "finished": _now(),
            }
            record["trials"].append(stored)
            history.insert_trial_docs([_hyperopt_doc(stored, labels, domain.cmd)])
            history.refresh()
            record["elapsed_s"] = spent()
            _write_trials(trials_path, record)
            failures_in_a_row = failures_in_a_row + 1 if reason else 0
            if progress:
                best = _best(record["trials"])
                told = f"failed: {reason}" if reason else f"loss {loss:.4f}"
                print(
                    f"trial {tid}: {told} ({duration:.0f} s); best {best['loss']:.4f} (trial {best['tid']})"
                    if best else f"trial {tid}: {told} ({duration:.0f} s)",
                    f"; {record['elapsed_s']:.0f}/{budget_s:.0f} s spent",
                    sep="", file=sys.stderr, flush=True,
                )  # fmt: skip
    except BaseException:
        record["elapsed_s"] = spent()
        try:
            _write_trials(trials_path, record)
        except Exception:  # a full disk must not hide why the search stopped
            pass
        raise
    record["elapsed_s"] = spent()
    _write_trials(trials_path, record)
    best = _best(record["trials"])
    best_point = None
    if best is not None:
        assignment = {label: values[0] for label, values in best["vals"].items() if values}
        best_point = space_eval(space, assignment)
    return TuneResult(
        best_point=best_point,
        best_loss=float(best["loss"]) if best else math.inf,
        n_trials=len(record["trials"]),
        elapsed_s=record["elapsed_s"],
        best_tid=best["tid"] if best else None,
        n_failed=sum(t["status"] == "fail" for t in record["trials"]),
    )


# --- durations ----------------------------------------------------------------------------------

def parse_budget(text: str) -> float:
    """Seconds of a time budget: ``"2h"``, ``"30m"``, ``"90s"``, ``"1h30m"``, ``"2 hours"``, ``"3600"``.

    Parameters
    ----------
    text : str
        A number of seconds, or a duration as :class:`pandas.Timedelta` reads it (units h, m,
        s, and their long names; case and spaces are ignored).

    Returns
    -------
    float
        Positive seconds.

    Raises
    ------
    ValueError
        One line, for anything else or a zero budget.
    """
    import pandas as pd

    cleaned = re.sub(r"\s+", "", str(text)).lower()
    try:
        seconds = float(cleaned)
    except ValueError:
        try:
            seconds = pd.Timedelta(cleaned).total_seconds()
        except (ValueError, TypeError):
            raise ValueError(
                f"time budget {text!r}: expected seconds or a duration such as 2h, 30m, 90s or 1h30m"
            ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"time budget {text!r}: must be a positive duration")
    return seconds


# --- tuning a model on a dataset ----------------------------------------------------------------


@dataclass(frozen=True)
class TuneSettings:
    """What to tune and for how long.

    Parameters
    ----------
    model_type : str
        One of the six models (:data:`pipeline.model.registry.ARCHITECTURE_NAMES`).
    budget_s : float
        Wall-clock seconds of the search (over every resumed run; see :func:`parse_budget`).
    max_trials : int, optional
        Stop after this many trials as well.
    seed : int, default 0
        Seed of the suggestions, of the held-out split and of every trial's training.
    stage : {"network", "xgboost", "both"}, optional
        What to tune: the network rows of the model, the hybrid's XGBoost (the network at its
        defaults), or both at once. Default: ``"both"`` for a hybrid, else ``"network"``.
    epochs : int, optional
        Cap on each trial's training epochs (default: the parameter file's, with early
        stopping); the best parameters written keep the file's ``epochs``.
    held_out_fraction : float, default 0.2
        Fraction of the training recordings (of those with calls and of those without) held
        out to score the trials.
    startup_trials : int, default 10
        Random trials before TPE (see :func:`tune`).
    networks_csv, xgboost_csv : str, optional
        Parameter files holding the values not tuned (default: the packaged ones).
    """

    model_type: str
    budget_s: float
    max_trials: int | None = None
    seed: int = 0
    stage: str | None = None
    epochs: int | None = None
    held_out_fraction: float = 0.2
    startup_trials: int = DEFAULT_STARTUP_TRIALS
    networks_csv: str | None = None
    xgboost_csv: str | None = None

    def __post_init__(self):
        from pipeline.model.registry import get_architecture

        try:
            arch = get_architecture(self.model_type)
        except KeyError as error:
            raise TuningError(error.args[0]) from None
        stage = self.stage if self.stage is not None else ("both" if arch.hybrid else "network")
        if stage not in STAGES:
            raise TuningError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
        if stage != "network" and not arch.hybrid:
            raise TuningError(f"{self.model_type} has no XGBoost: only its networks can be tuned (stage network)")
        object.__setattr__(self, "stage", stage)
        if isinstance(self.budget_s, bool) or not isinstance(self.budget_s, (int, float)) or not (
            0 < self.budget_s < math.inf
        ):
            raise TuningError(f"the time budget must be a positive number of seconds, not {self.budget_s!r}")
        if self.max_trials is not None and (
            isinstance(self.max_trials, bool) or not isinstance(self.max_trials, int) or self.max_trials < 1
        ):
            raise TuningError(f"max_trials must be a positive integer, not {self.max_trials!r}")
        if not 0 < self.held_out_fraction < 1:
            raise TuningError(f"held_out_fraction must be in (0, 1), not {self.held_out_fraction!r}")
        if self.epochs is not None and self.epochs < 1:
            raise TuningError(f"epochs must be at least 1, not {self.epochs!r}")

    @property
    def tuned_rows(self) -> tuple[str, ...]:
        """The parameter rows searched: the network rows, the booster row, or both."""
        from pipeline.model.registry import BOOSTER_ROW, get_architecture

        arch = get_architecture(self.model_type)
        networks = arch.network_rows if self.stage in ("network", "both") else ()
        return (*networks, *((BOOSTER_ROW,) if self.stage in ("xgboost", "both") else ()))


def model_search_space(settings: TuneSettings) -> dict:
    """The joint hyperopt space of the rows :attr:`TuneSettings.tuned_rows`, by row."""
    return {row: search_space(row) for row in settings.tuned_rows}


def hold_out_recordings(recordings: list, fraction: float, seed: int) -> tuple[list, list]:
    """Split training recordings into those a trial trains on and those that score it.

    Recordings with calls and recordings without are held out in the same proportion, at least
    one with calls, so that the held-out detection AP is defined.

    Parameters
    ----------
    recordings : list of RecordingCalls
        The dataset's training split.
    fraction : float
        Fraction held out.
    seed : int
        Seed of the draw (independent of the early-stopping split of each trial).

    Returns
    -------
    tuple of list
        ``(fit, held_out)``, each in the original order.

    Raises
    ------
    TuningError
        With fewer than two recordings with calls.
    """
    rng = np.random.default_rng([seed, 0x7475])
    with_calls = [i for i, rec in enumerate(recordings) if len(rec.positions) > 0]
    without = [i for i, rec in enumerate(recordings) if len(rec.positions) == 0]
    if len(with_calls) < 2:
        raise TuningError(
            f"tuning needs at least two training recordings with calls (one to train on, one to "
            f"score on); the dataset has {len(with_calls)}"
        )
    held = set()
    for group, at_least in ((with_calls, 1), (without, 0)):
        n = min(max(int(round(fraction * len(group))), at_least), len(group) - at_least)
        held.update(int(i) for i in rng.permutation(group)[:n])
    fit = [rec for i, rec in enumerate(recordings) if i not in held]
    return fit, [rec for i, rec in enumerate(recordings) if i in held]


def held_out_loss(report) -> float:
    """``1 - detection AP`` of a trial's report (its test split being the held-out recordings)."""
    ap = (report.metrics or {}).get("detection", {}).get("ap")
    if ap is None or not math.isfinite(ap):
        raise TuningError("no detection AP on the held-out recordings (none of their calls is in the cube)")
    return 1.0 - float(ap)


def write_best_params(out_dir: Path, settings: TuneSettings, best_point: Mapping | None) -> list[Path]:
    """``best_networks.csv`` (and ``best_xgboost.csv`` for a hybrid) of the best point.

    Rows and columns not tuned keep :attr:`TuneSettings.networks_csv` / ``xgboost_csv``'s values
    (the packaged ones by default). Nothing is written without a best point.
    """
    from pipeline.model.registry import BOOSTER_ROW, get_architecture

    if not best_point:
        return []
    arch = get_architecture(settings.model_type)
    tuned = {row: to_params(row, best_point[row]) for row in settings.tuned_rows}
    networks = {row: tuned.get(row, {}) for row in arch.network_rows}
    written = [write_params_csv(out_dir / "best_networks.csv", networks, defaults=settings.networks_csv)]
    if arch.hybrid:
        booster = {BOOSTER_ROW: tuned.get(BOOSTER_ROW, {})}
        written.append(write_params_csv(out_dir / "best_xgboost.csv", booster, defaults=settings.xgboost_csv))
    return written


def tune_model(
    dataset: str | os.PathLike,
    audio_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: TuneSettings,
    *,
    client=None,
    cluster: str | None = None,
    cube: str | os.PathLike | None = None,
    progress: bool = True,
    run_settings=None,
    trust_npz: bool = False,
    dataset_options: dict | None = None,
    n_workers: int | None = None,
) -> TuneResult:
    """Search a model's hyperparameters on a dataset: ``batml tune`` from Python.

    The dataset's training recordings are split (:func:`hold_out_recordings`); every trial
    trains the model with the point's parameters on the first part with
    :func:`pipeline.training.job.train_model` (which keeps a part of it for early stopping and
    thresholds) and scores ``1 - detection AP`` on the held-out part. The test split is not
    used. Rerunning the same command resumes the search.

    Parameters
    ----------
    dataset : str or os.PathLike
        The reference system's ``.npz`` or a CSV of calls.
    audio_dir : str or os.PathLike
        Folder of the recordings.
    out_dir : str or os.PathLike
        Folder of ``trials.json``, ``best_networks.csv`` and, for a hybrid,
        ``best_xgboost.csv`` (written whenever the search stops, interrupted or not).
    settings : TuneSettings
        What to tune and for how long.
    client, cluster, n_workers
        Where to run (see :func:`pipeline.distributed.connect`).
    cube : str or os.PathLike, optional
        Spectrogram cube to reuse or create (default: ``<out_dir>/cube.zarr``).
    progress : bool, default True
        One line per trial on standard error.
    run_settings : pipeline.config.Settings, optional
        Spectrogram and ingest settings.
    trust_npz : bool, default False
        Allow pickle when reading the ``.npz`` (only for files you made yourself).

    Returns
    -------
    TuneResult
        ``best_point`` by row (see :func:`to_params`), ``best_loss = 1 - AP``.

    Raises
    ------
    TuningError
        When the dataset cannot be split, the trials file is of another search, or no trial
        succeeded (with the last trial's reason).
    """
    import keras

    from pipeline.annotations.dataset import read_dataset
    from pipeline.config import Settings
    from pipeline.distributed import connect
    from pipeline.ingestion import ingest
    from pipeline.model.registry import BOOSTER_ROW
    from pipeline.training.job import TrainSettings, train_model

    run_settings = run_settings or Settings()
    out_dir = Path(out_dir)
    annotations = read_dataset(dataset, trust_npz=trust_npz, **(dataset_options or {}))
    fit, held_out = hold_out_recordings(annotations.train, settings.held_out_fraction, settings.seed)
    trial_annotations = replace(annotations, train=fit, test=held_out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cube = Path(cube) if cube is not None else out_dir / "cube.zarr"
    trials_path = out_dir / "trials.json"
    context = {
        "model_type": settings.model_type,
        "stage": settings.stage,
        "epochs": settings.epochs,
        "held_out_fraction": settings.held_out_fraction,
        "space": {row: describe_search_space(row) for row in settings.tuned_rows},
    }

    with connect(cluster, client=client, n_workers=n_workers, quiet=not progress) as client:
        ingest(audio_dir, cube, settings=run_settings, client=client, progress=progress)

        def objective(point: dict) -> float:
            rows = {row: to_params(row, point[row]) for row in settings.tuned_rows}
            networks = {row: values for row, values in rows.items() if row != BOOSTER_ROW}
            try:
                with tempfile.TemporaryDirectory(prefix=".trial-", dir=out_dir) as tmp:
                    tmp = Path(tmp)
                    networks_csv, xgboost_csv = settings.networks_csv, settings.xgboost_csv
                    if networks:
                        networks_csv = str(write_params_csv(tmp / "networks.csv", networks, defaults=networks_csv))
                    if BOOSTER_ROW in rows:
                        booster = {BOOSTER_ROW: rows[BOOSTER_ROW]}
                        xgboost_csv = str(write_params_csv(tmp / "xgboost.csv", booster, defaults=xgboost_csv))
                    trial = TrainSettings(
                        model_type=settings.model_type, seed=settings.seed, epochs=settings.epochs,
                        networks_csv=networks_csv, xgboost_csv=xgboost_csv, runtime_precision="float",
                    )  # fmt: skip
                    report = train_model(
                        trial_annotations, cube, trial, client=client,
                        spectrogram_settings=run_settings.spectrogram, out=tmp / "model", progress=False,
                    )  # fmt: skip
                return held_out_loss(report)
            finally:
                keras.backend.clear_session()  # free the trial's graphs before the next one

        try:
            result = search_hyperparameters(
                objective, model_search_space(settings), trials_path, budget_s=settings.budget_s,
                max_trials=settings.max_trials, seed=settings.seed, startup_trials=settings.startup_trials,
                context=context, stop_after_failures=5, progress=progress,
            )  # fmt: skip
        except KeyboardInterrupt:
            try:  # the best so far, so that an interrupted search leaves its files too
                write_best_params(out_dir, settings, tuning_summary(trials_path).best_point)
            except Exception:
                pass
            raise
    write_best_params(out_dir, settings, result.best_point)
    if result.best_point is None:
        last = read_trials(trials_path)["trials"]
        reason = last[-1].get("reason") if last else "no trial ran (the budget was already spent)"
        raise TuningError(f"no trial succeeded ({result.n_trials} ran); last reason: {reason}")
    return result
