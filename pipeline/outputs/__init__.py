"""What a detection run writes in its output folder, and the readers of it.

- :mod:`~pipeline.outputs.folder`: the folder's layout and its temporaries;
- :mod:`~pipeline.outputs.parts`: the canonical table, one Parquet part per cube chunk;
  :func:`~pipeline.outputs.parts.read_detections` (pandas), ``open_detections`` (Dask);
- :mod:`~pipeline.outputs.reference_csv`: the reference system's CSV;
- :mod:`~pipeline.outputs.raven`: Raven Pro selection tables;
- :mod:`~pipeline.outputs.report`: the run report;
- :mod:`~pipeline.outputs.accessor`: ``calls.batml.species(...)`` on a table of calls.

The columns of the table are :mod:`pipeline.detection.schema`'s.
"""

from pipeline.outputs import accessor  # noqa: F401  (registers the DataFrame accessor ``.batml``)
