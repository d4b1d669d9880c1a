"""Training one of the six models on annotated recordings (``batml train``).

- :mod:`~pipeline.training.job`: the whole job, from annotations and recordings to a model bundle;
- :mod:`~pipeline.training.networks`: the networks, trained on windows streamed from the cube;
- :mod:`~pipeline.training.batch_norm`: batch-norm statistics re-estimated on training windows
  (the ResNets), and :mod:`~pipeline.training.callbacks`, the Keras callbacks that run it and
  time each epoch;
- :mod:`~pipeline.training.boosters`: the hybrids' embeddings (Dask) and XGBoost boosters;
- :mod:`~pipeline.training.hard_negatives`: hard negative mining.
"""


class TrainingError(ValueError):
    """Training cannot go on as asked; one line for the user."""
