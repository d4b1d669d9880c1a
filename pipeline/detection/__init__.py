"""Detection: from a recording's spectrogram to its detected calls.

- :mod:`~pipeline.detection.schema`: the detections schema (columns, dtypes), thresholds and
  reported species, shared by compute and I/O;
- :mod:`~pipeline.detection.scoring`: windows and the model's probability of every window,
  coarse to fine;
- :mod:`~pipeline.detection.events`: smoothing and non-maximum suppression (Cython): the events;
- :mod:`~pipeline.detection.recording`: a recording whole, or block by block with exact borders;
- :mod:`~pipeline.detection.settings`: what a run does beyond the model (thresholds, fast path);
- :mod:`~pipeline.detection.archive`: ``batml detect``, a whole archive on Dask, resumable.
"""
