"""batml: bat echolocation call detection and multi-label species classification at archive scale.

The import name is ``pipeline``; the console command is ``batml``. Every command is a Python
call too, with the same name::

    import pipeline
    pipeline.simulate("sim", minutes=5)                # a synthetic annotated archive
    pipeline.ingest("sim", "sim.zarr")                 # its spectrogram cube, built with Dask
    pipeline.detect("sim", "results")                  # every call of an archive, to OUT_DIR
    pipeline.train("sim/annotations.npz", "sim", "models/mine")
    pipeline.evaluate("models/mine", "sim/annotations.npz", "sim")
    pipeline.tune("sim/annotations.npz", "sim", "tuning", pipeline.TuneSettings(budget_s=3600))

    model = pipeline.open_model()                      # the bundled model (or a path)
    calls = model.detect("night/20260612_213015.wav")  # a file, a folder, an array: a table of calls
    cube = pipeline.open_cube("sim.zarr")              # lazy xarray Dataset
    calls = pipeline.read_detections("results")        # a run's calls, pandas (open_detections: Dask)
    calls.batml.species("Pip35", min_probability=0.8)
    from pipeline import plot                          # matplotlib figures (pip install 'batml[plot]')

The Dask jobs (``ingest``, ``detect``, ``train``, ``evaluate``, ``tune``) run on the
``distributed.Client`` already running in the process when there is one (a notebook's), and
start a local cluster for the call only when there is none (``cluster=`` says otherwise).
Nothing heavy is imported until it is used: ``import pipeline`` loads neither TensorFlow nor
matplotlib.
"""

from importlib import import_module

from pipeline._version import __version__
from pipeline.logs import quiet_tensorflow

quiet_tensorflow()

#: Public name -> (module, attribute), imported on first use.
_API = {
    "simulate": ("pipeline.simulation", "simulate_archive"),
    "simulate_archive": ("pipeline.simulation", "simulate_archive"),
    "ingest": ("pipeline.ingestion", "ingest"),
    "detect": ("pipeline.detection.archive", "detect_archive"),
    "train": ("pipeline.training.job", "train"),
    "evaluate": ("pipeline.evaluation.run", "evaluate_saved_model"),
    "tune": ("pipeline.tuning", "tune_model"),
    "open_cube": ("pipeline.io.cube", "open_cube"),
    "open_model": ("pipeline.model.model", "open_model"),
    "read_detections": ("pipeline.outputs.parts", "read_detections"),
    "open_detections": ("pipeline.outputs.parts", "open_detections"),
    "Settings": ("pipeline.config", "Settings"),
    "SpectrogramSettings": ("pipeline.config", "SpectrogramSettings"),
    "IngestSettings": ("pipeline.config", "IngestSettings"),
    "DetectSettings": ("pipeline.detection.archive", "DetectSettings"),
    "TrainSettings": ("pipeline.training.job", "TrainSettings"),
    "TuneSettings": ("pipeline.tuning", "TuneSettings"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    # Imported on first use, so that `import pipeline` (and `batml --help`) stays fast.
    if name in _API:
        module, attribute = _API[name]
        return getattr(import_module(module), attribute)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
