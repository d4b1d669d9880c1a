"""batml: bat echolocation call detection and multi-label species classification at archive scale.

The import name is ``pipeline``; the console command is ``batml``. The main entry points::

    import pipeline
    from pipeline.ingest import ingest
    pipeline.simulate_archive("sim", minutes=5)      # a synthetic annotated archive
    ingest("sim", "sim.zarr")                         # its spectrogram cube, built with Dask
    cube = pipeline.open_cube("sim.zarr")             # lazy xarray Dataset
    cube.batml.recording("site01/20260612_213015.wav")
    model = pipeline.open_model()                     # a model bundle (default: the bundled one)
    calls = pipeline.read_detections("results/night") # detected calls, pandas (open_detections: Dask)
    calls.batml.species("Pip35", min_probability=0.8)
    from pipeline import plot                         # matplotlib figures (pip install 'batml[plot]')
    plot.spectrogram(cube, "site01/20260612_213015.wav", 1.0, 2.5, detections=calls, model=model)
"""

from importlib import import_module

from pipeline._version import __version__

_API = {
    "simulate_archive": "pipeline.simulate",
    "open_cube": "pipeline.io.cube",
    "open_model": "pipeline.model.bundle",
    "read_detections": "pipeline.io.detections",
    "open_detections": "pipeline.io.detections",
    "Settings": "pipeline.config",
    "SpectrogramSettings": "pipeline.config",
    "IngestSettings": "pipeline.config",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    # Imported on first use, so that `import pipeline` (and `batml --help`) stays fast.
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
