"""The hybrids' second stage: embeddings computed with Dask, one XGBoost booster per output.

Binary relevance, as the reference system: one booster per output column (``not call`` and
each class), each with its own balanced sample weights, trained with ``xgboost.dask`` on the
embeddings of the training windows; a booster whose training lost a worker is trained again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pipeline.model.predictor import booster_names, embedding_model
from pipeline.training import TrainingError

_EMBEDDERS: dict = {}


def _embedder(model_path: str):
    """The embedding model, loaded once per worker process (cached by path)."""
    if model_path not in _EMBEDDERS:
        import keras

        _EMBEDDERS.clear()
        _EMBEDDERS[model_path] = keras.models.load_model(model_path, safe_mode=True, compile=False)
    return _EMBEDDERS[model_path]


def embed_windows(model_path: str, cube_path: str, columns: np.ndarray) -> np.ndarray:
    """Embeddings (n, d) float32 of the windows starting at ``columns`` (one Dask task)."""
    import zarr

    from pipeline.windows import read_windows

    array = zarr.open_array(f"{cube_path}/spectrogram", mode="r")
    return _embedder(model_path).predict(read_windows(array, columns), verbose=0, batch_size=1024).astype(np.float32)


def embeddings(client, model_path: str, cube_path: str, columns: np.ndarray, n_dims: int, batch: int = 4096):
    """A Dask array (n, n_dims) of the windows' embeddings, computed on the cluster."""
    import dask.array as da

    parts = []
    for start in range(0, len(columns), batch):
        part = columns[start : start + batch]
        future = client.submit(embed_windows, model_path, cube_path, part, pure=False)
        parts.append(da.from_delayed(future, shape=(len(part), n_dims), dtype=np.float32))
    return da.concatenate(parts) if parts else da.zeros((0, n_dims), np.float32)


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights that give both values of a binary label the same total weight."""
    positive = labels > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.ones(len(labels), np.float32)
    n = len(labels)
    return np.where(positive, n / (2 * n_pos), n / (2 * n_neg)).astype(np.float32)


def fit_boosters(client, features, targets: np.ndarray, xgb_params: dict, seed: int) -> dict:
    """One XGBoost booster per output column (binary relevance), trained with ``xgboost.dask``.

    Binary relevance rather than one multi-output model: each output gets its own balanced
    sample weights (rare groups are not drowned by "not call"), as the reference system did.
    """
    import dask.array as da
    from xgboost import dask as dxgb

    params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "max_depth": int(xgb_params.get("max_depth", 15)),
        "eta": float(xgb_params.get("eta", 0.197)),
        "gamma": float(xgb_params.get("gamma", 0.001)),
        "subsample": float(xgb_params.get("subsample", 0.9)),
        "scale_pos_weight": float(xgb_params.get("scale_pos_weight", 1.0)),
        "min_child_weight": float(xgb_params.get("min_child_weight", 1)),
        "seed": seed,
        "verbosity": 0,
    }
    rounds = int(xgb_params.get("n_estimators", 2000))
    features = features.persist()
    chunks = features.chunks[0]
    boosters = {}
    for j, name in enumerate(booster_names(targets.shape[1])):
        known = ~np.isnan(targets[:, j])  # NaN: a call of unknown species, not learned by class boosters
        weights = np.zeros(len(targets), np.float32)
        weights[known] = balanced_weights(targets[known, j])
        label = da.from_array(np.nan_to_num(targets[:, j], nan=0.0), chunks=chunks)
        weight = da.from_array(weights, chunks=chunks)

        def fit():
            matrix = dxgb.DaskDMatrix(client, features, label, weight=weight)
            return dxgb.train(client, params, matrix, num_boost_round=rounds)["booster"]

        boosters[name] = retry_after_worker_loss(client, fit, what=f"XGBoost booster {name}")
    return boosters


def retry_after_worker_loss(client, fit, *, what: str, attempts: int = 3):
    """``fit()``, run again (up to ``attempts`` times in all) when a worker left the cluster
    while it ran.

    ``xgboost.dask`` cannot survive the loss of a worker during training ("resilience is not
    yet supported"): its collective fails. Dask recomputes the lost partitions of the data on
    the remaining (or restarted) workers, so training the booster again from the start gives
    a complete booster; an error while the workers stayed the same is raised at once.
    """
    for attempt in range(1, attempts + 1):
        before = set(client.scheduler_info()["workers"])
        try:
            return fit()
        except Exception as exc:
            lost = before - set(client.scheduler_info()["workers"])
            worker_died = bool(lost) or "worker" in str(exc).lower() and "died" in str(exc).lower()
            if not worker_died:
                raise
            if attempt == attempts:
                raise TrainingError(
                    f"{what}: a Dask worker was lost {attempts} times while training it; "
                    "check the workers' memory and run the same command again"
                ) from exc
            client.wait_for_workers(1, timeout=300)


def fit_hybrid_boosters(client, arch, networks, cube_path, samples, booster_params, settings) -> dict:
    network = networks[arch.network_rows[0]]
    embed = embedding_model(network)
    with tempfile.TemporaryDirectory(prefix="batml-embedding-", dir=Path(cube_path).parent) as tmp:
        model_path = str(Path(tmp) / "embedding.keras")
        embed.save(model_path)
        features = embeddings(client, model_path, str(cube_path), samples.columns, int(embed.output_shape[-1]))
        return fit_boosters(client, features, samples.targets, booster_params, settings.seed)
