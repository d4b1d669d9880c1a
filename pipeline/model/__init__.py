"""The six model architectures and their default hyperparameters (``params/*.csv``)."""
