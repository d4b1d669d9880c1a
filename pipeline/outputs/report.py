"""The run report: ``OUT/report.json`` and its summary ``OUT/report.txt``.

Files processed and failed (each with its reason), calls per class (as the CSV's rows count
them), the model, the settings' fingerprint, timings and the outputs written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.files import atomic_file, json_ready
from pipeline.outputs.folder import REPORT_JSON_NAME, REPORT_TEXT_NAME, output_directory
from pipeline.outputs.parts import iter_parts
from pipeline.outputs.reference_csv import reference_rows


def calls_per_class(
    out_dir: str | os.PathLike, classes: Sequence[str], thresholds: Mapping[str, float] | None
) -> dict[str, int]:
    """Count the calls of each class, as the rows of the reference system's CSV count them.

    Parameters
    ----------
    out_dir, classes, thresholds
        As :func:`write_reference_csv`.

    Returns
    -------
    dict of str to int
        Every class, in class order, and its number of rows of :func:`reference_rows` (an event
        with two species counts once for each); streams over the parts.
    """
    classes = [str(name) for name in classes]
    counts = dict.fromkeys(classes, 0)
    for _, events in iter_parts(out_dir):
        for name, n in reference_rows(events, classes, thresholds)["predicted_species"].value_counts().items():
            counts[str(name)] += int(n)
    return counts


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def _seconds_text(seconds: Any) -> str:
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    clock = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:04.1f} s"
    return f"{clock} ({seconds:.1f} s)"


def report_text(report: Mapping[str, Any]) -> str:
    """A readable summary of a run report (the content of ``report.txt``).

    Parameters
    ----------
    report : mapping
        As :func:`write_report`; missing keys are left out of the summary.

    Returns
    -------
    str
        Lines ``key: value``; each failed file on one line ``failed: PATH: REASON``
        (line breaks inside a reason replaced by spaces), classes and timings indented.
    """
    lines = ["batml detection run"]
    failed = list(report.get("files_failed") or [])
    if "files_processed" in report:
        lines.append(f"files processed: {report['files_processed']}")
    lines.append(f"files failed: {len(failed)}")
    for item in failed:
        if isinstance(item, Mapping):
            file, reason = item.get("file", "?"), item.get("reason", "")
        else:
            file, reason = item, ""
        lines.append(f"failed: {_one_line(file)}: {_one_line(reason)}")
    if "audio_seconds" in report:
        lines.append(f"audio: {_seconds_text(report['audio_seconds'])}")
    if "n_detections" in report:
        lines.append(f"detections: {report['n_detections']}")
    if report.get("calls_per_class"):
        lines.append("calls per class:")
        lines += [f"  {name}: {n}" for name, n in report["calls_per_class"].items()]
    model = report.get("model")
    if isinstance(model, Mapping):
        details = ", ".join(
            f"{key} {model[key]}" for key in ("architecture", "fingerprint") if key in model
        )
        lines.append(f"model: {model.get('path', '?')}" + (f" ({details})" if details else ""))
        if model.get("licence"):
            lines.append(f"model licence: {model['licence']}")
        runtime = model.get("runtime")
        if isinstance(runtime, Mapping) and runtime.get("engine"):
            how = ", ".join(str(runtime[k]) for k in ("precision", "graphs") if runtime.get(k))
            lines.append(f"network runs on: {runtime['engine']}" + (f" ({how})" if how else ""))
    if report.get("cluster"):
        lines.append(f"cluster: {report['cluster']}")
    if "settings_fingerprint" in report:
        lines.append(f"settings fingerprint: {report['settings_fingerprint']}")
    timings = report.get("timings") or {}
    if timings:
        lines.append("timings:")
        lines += [f"  {name}: {_seconds_text(seconds)}" for name, seconds in timings.items()]
        total = timings.get("total")
        audio = report.get("audio_seconds")
        if isinstance(total, (int, float)) and isinstance(audio, (int, float)) and total > 0:
            lines.append(f"speed: {audio / total:.1f} x real time")
    if report.get("outputs"):
        lines.append("outputs:")
        lines += [f"  {name}: {path}" for name, path in report["outputs"].items()]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any]) -> Path:
    """Write the run report: ``OUT/report.json`` and its summary ``OUT/report.txt``.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The output folder (or its folder of parts).
    report : mapping
        What the run reports; the keys that the summary shows are ``files_processed``
        (int), ``files_failed`` (list of ``{"file": str, "reason": str}``),
        ``calls_per_class`` (class to int), ``n_detections`` (int),
        ``settings_fingerprint`` (str), ``model`` (``path``, ``architecture``,
        ``fingerprint``, ...), ``timings`` (name to seconds; ``total`` gives the speed),
        ``audio_seconds`` (float) and ``outputs`` (format to path). Any other key is kept
        in the JSON.

    Returns
    -------
    pathlib.Path
        ``OUT/report.json``: the report as strict JSON (indent 2, keys sorted; numpy
        values and paths converted, NaN as null). Both files are written atomically.
    """
    out = output_directory(out_dir)
    document = json_ready(report)
    target = out / REPORT_JSON_NAME
    with atomic_file(target) as fh:
        fh.write(json.dumps(document, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n")
    with atomic_file(out / REPORT_TEXT_NAME) as fh:
        fh.write(report_text(document))
    return target
