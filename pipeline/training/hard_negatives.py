"""The reference system's hard negative mining: a model's mistakes on its training recordings become samples."""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.recordings import calls_table, detect_recordings


def hard_examples(predictor, cube, recordings, classes, samples, tolerance: float = 0.010):
    """The reference system's hard negative mining on the training recordings.

    Detections above 0.5 that match no call become negatives; calls no detection found
    become extra positives (their shifted windows once more).
    """
    from pipeline.evaluation.matching import call_events, match_detections
    from pipeline.sampling import Samples, SamplingSettings, cube_column_steps, positive_windows

    calls = calls_table(recordings, cube)
    detections = detect_recordings(predictor, cube, recordings, classes)
    # The reference system's detections: the peaks whose raw call score beats P(not call).
    detections = detections[detections["score"].to_numpy() > 0.5].reset_index(drop=True)
    if calls.empty:
        return samples
    matches = match_detections(calls, detections, tolerance) if len(detections) else np.zeros(0, np.int64)
    n_out = samples.n_outputs
    starts, n_columns, steps = cube["start"].values, cube["n_columns"].values, cube_column_steps(cube)
    false = detections[matches < 0]
    recording = false["recording"].astype(np.int32).to_numpy()
    negatives = Samples(
        columns=starts[recording] + false["column"].to_numpy(np.int64),
        recording=recording,
        targets=np.tile(np.eye(1, n_out, 0, dtype=np.float32), (len(false), 1)),
    )
    events = call_events(calls)
    missed = events.iloc[np.setdiff1d(np.arange(len(events)), matches[matches >= 0])]
    parts = [samples, negatives]
    missed_calls = calls.merge(missed[["recording", "position"]], on=["recording", "position"])
    for r_text, group in missed_calls.groupby("recording"):
        r = int(r_text)
        local, targets = positive_windows(
            group["position"].to_numpy(), group["class"].to_numpy(), n_out - 1, steps[r], int(n_columns[r]),
            SamplingSettings(),
        )  # fmt: skip
        parts.append(Samples(starts[r] + local, np.full(len(local), r, np.int32), targets))
    return Samples.concatenate(parts)
