"""The six models of the reference system, by name, and the Keras networks each one trains.

================================  ======  ==========  ======  =========================
name                              family  two stages  hybrid  network rows
================================  ======  ==========  ======  =========================
``cnn8``                          cnn     no          no      ``cnn_8``
``cnn2``                          cnn     yes         no      ``cnn_2``, ``cnn_7``
``resnet8``                       resnet  no          no      ``resnet_8``
``resnet2``                       resnet  yes         no      ``resnet_2``, ``resnet_7``
``hybrid_cnn_xgboost``            cnn     no          yes     ``cnn_8``
``hybrid_resnet_xgboost``         resnet  no          yes     ``resnet_8``
================================  ======  ==========  ======  =========================

A one-stage network (and the network under a hybrid's XGBoost) has ``n_classes + 1`` sigmoid
outputs: "not call" then the classes. A two-stage model's first network is the detector (2-way
softmax: not call, call), its second the classifier (``n_classes`` sigmoid outputs, run only on
detected calls). A hybrid's XGBoost reads the network's layer ``"embedding"`` and is
configured by the :data:`BOOSTER_ROW` of ``params/xgboost.csv``.

This module imports Keras only when a network is built or compiled, so that listing the
models stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pipeline.model.params import check_required, load_params

if TYPE_CHECKING:
    import keras

#: The parameter row of the hybrids' XGBoost (in ``params/xgboost.csv``).
BOOSTER_ROW = "xgboost_spectrogram"


@dataclass(frozen=True)
class Architecture:
    """One of the six models: which networks it trains and how it uses them.

    Parameters
    ----------
    name : str
        The model's name, e.g. ``"hybrid_cnn_xgboost"``.
    family : {"cnn", "resnet"}
        The kind of network it trains.
    two_stage : bool
        True when a detector network finds the calls and a second network classifies them.
    hybrid : bool
        True when XGBoost, fed the network's embedding, makes the final predictions.
    network_rows : tuple of str
        The ``networks.csv`` rows of its networks, the detector first for a two-stage model.
    description : str
        One sentence for users.
    """

    name: str
    family: Literal["cnn", "resnet"]
    two_stage: bool
    hybrid: bool
    network_rows: tuple[str, ...]
    description: str

    @property
    def detector_row(self) -> str:
        """The row of the network that tells calls from non-calls."""
        return self.network_rows[0]

    @property
    def classifier_row(self) -> str:
        """The row of the network that tells the classes apart (the detector's, in one stage)."""
        return self.network_rows[-1]

    def head(self, row: str, n_classes: int) -> tuple[int, str]:
        """The output size and activation of one of this model's networks.

        Parameters
        ----------
        row : str
            One of :attr:`network_rows`.
        n_classes : int
            Number of classes (bat species or groups), without "not call".

        Returns
        -------
        tuple of (int, str)
            ``(2, "softmax")`` for a two-stage detector, ``(n_classes, "sigmoid")`` for a
            two-stage classifier, ``(n_classes + 1, "sigmoid")`` otherwise.
        """
        if row not in self.network_rows:
            raise KeyError(f"{self.name} has no network {row!r}; it has {self.network_rows}")
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be a positive integer, not {n_classes!r}")
        if not self.two_stage:
            return n_classes + 1, "sigmoid"
        if row == self.detector_row:
            return 2, "softmax"
        return n_classes, "sigmoid"


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "cnn8",
        "cnn",
        two_stage=False,
        hybrid=False,
        network_rows=("cnn_8",),
        description="One small CNN whose sigmoid outputs ('not call' + classes) both detect "
        "and classify.",
    ),
    Architecture(
        "cnn2",
        "cnn",
        two_stage=True,
        hybrid=False,
        network_rows=("cnn_2", "cnn_7"),
        description="A small CNN detector (2-way softmax) and a small CNN classifier "
        "(one sigmoid per class) run only on the detected calls.",
    ),
    Architecture(
        "resnet8",
        "resnet",
        two_stage=False,
        hybrid=False,
        network_rows=("resnet_8",),
        description="One ResNet50 whose sigmoid outputs ('not call' + classes) both detect "
        "and classify.",
    ),
    Architecture(
        "resnet2",
        "resnet",
        two_stage=True,
        hybrid=False,
        network_rows=("resnet_2", "resnet_7"),
        description="A ResNet50 detector (2-way softmax) and a ResNet50 classifier "
        "(one sigmoid per class) run only on the detected calls.",
    ),
    Architecture(
        "hybrid_cnn_xgboost",
        "cnn",
        two_stage=False,
        hybrid=True,
        network_rows=("cnn_8",),
        description="The reference system's proposed model: XGBoost ('not call' + classes) on the 320 "
        "values of a small CNN's last hidden layer.",
    ),
    Architecture(
        "hybrid_resnet_xgboost",
        "resnet",
        two_stage=False,
        hybrid=True,
        network_rows=("resnet_8",),
        description="XGBoost ('not call' + classes) on the 2048 pooled values of a ResNet50.",
    ),
)

#: The six model names, in the order of :data:`ARCHITECTURES`.
ARCHITECTURE_NAMES: tuple[str, ...] = tuple(a.name for a in ARCHITECTURES)

_BY_NAME = {a.name: a for a in ARCHITECTURES}


def get_architecture(name: str) -> Architecture:
    """The model called ``name``.

    Raises
    ------
    KeyError
        When no model has that name; the message lists the known ones.
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise KeyError(
            f"unknown model {name!r}; known: {', '.join(ARCHITECTURE_NAMES)}"
        ) from None


def build_networks(
    arch: Architecture | str,
    n_classes: int,
    params_by_row: Mapping[str, Mapping[str, int | float]] | None = None,
    *,
    input_shape: tuple[int, int, int] = (130, 20, 1),
) -> dict[str, keras.Model]:
    """The untrained, uncompiled Keras networks of one model.

    Parameters
    ----------
    arch : Architecture or str
        The model, or its name.
    n_classes : int
        Number of classes, without "not call" (7 for the reference system's bat groups).
    params_by_row : Mapping, optional
        Hyperparameters by network row (e.g. ``{"cnn_8": load_params("cnn_8", path)}``); a
        row left out gets the packaged defaults.
    input_shape : tuple of int, default (130, 20, 1)
        One spectrogram patch.

    Returns
    -------
    dict of str to keras.Model
        One network per row of ``arch.network_rows``, in that order (detector first), each
        named after its row.
    """
    if isinstance(arch, str):
        arch = get_architecture(arch)
    if arch.family == "cnn":
        from pipeline.model.cnn import build_cnn as build
    else:
        from pipeline.model.resnet import build_resnet as build
    params_by_row = params_by_row or {}
    networks = {}
    for row in arch.network_rows:
        n_outputs, activation = arch.head(row, n_classes)
        params = params_by_row[row] if row in params_by_row else load_params(row)
        networks[row] = build(
            n_outputs, params, activation=activation, input_shape=input_shape, name=row
        )
    return networks


def compile_network(
    model: keras.Model, params: Mapping[str, int | float], *, masked: bool = False, rate_factor: float = 1.0
) -> keras.Model:
    """Compile a network for training with its row's Adam settings.

    The loss follows the head: categorical cross-entropy (one-hot targets) for a softmax
    detector, binary cross-entropy (one independent target per output) otherwise. Keras's
    ``loss`` adds the layers' L2 penalties; a network that has some (the ResNets' rows) also
    gets the metric ``cross_entropy``, the cross-entropy alone, so that its history shows both.

    Parameters
    ----------
    model : keras.Model
        A network from :func:`build_networks`, :func:`~pipeline.model.cnn.build_cnn` or
        :func:`~pipeline.model.resnet.build_resnet`.
    params : Mapping
        Its row; reads ``learning_rate``, ``beta_1``, ``beta_2`` and, when present,
        ``adam_epsilon`` (Keras's default otherwise).
    masked : bool
        Some targets are unknown (NaN: the classes of a call whose species is not given):
        the binary cross-entropy of :func:`masked_binary_crossentropy` skips them.
    rate_factor : float
        Multiplies the row's learning rate (fine-tuning's second phase).

    Returns
    -------
    keras.Model
        ``model``, compiled in place.
    """
    import keras

    check_required(params, ("learning_rate", "beta_1", "beta_2"), needed_by="compile_network")
    optimizer = keras.optimizers.Adam(
        learning_rate=float(params["learning_rate"]) * float(rate_factor),
        beta_1=float(params["beta_1"]),
        beta_2=float(params["beta_2"]),
        epsilon=float(params.get("adam_epsilon", 1e-7)),
    )
    head = model.layers[-1].get_config().get("activation")
    if head == "softmax":
        loss, cross_entropy = "categorical_crossentropy", keras.losses.categorical_crossentropy
    elif masked:
        loss = cross_entropy = masked_binary_crossentropy
    else:
        loss, cross_entropy = "binary_crossentropy", keras.losses.binary_crossentropy
    metrics = []
    if model.losses:  # L2 penalties, which Keras adds to "loss" (they dominate a ResNet's)
        metrics.append(keras.metrics.MeanMetricWrapper(cross_entropy, name="cross_entropy"))
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def masked_binary_crossentropy(y_true, y_pred):
    """Binary cross-entropy averaged over the known targets of each sample (NaN: unknown).

    Equal to Keras's ``binary_crossentropy`` where every target is known; a sample with no
    known target adds nothing.
    """
    import keras
    from keras import ops

    known = ops.logical_not(ops.isnan(y_true))
    y_true = ops.where(known, y_true, ops.zeros_like(y_true))
    epsilon = keras.config.epsilon()
    y_pred = ops.clip(y_pred, epsilon, 1.0 - epsilon)
    cross = -(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
    weight = ops.cast(known, y_pred.dtype)
    return ops.sum(cross * weight, axis=-1) / ops.maximum(ops.sum(weight, axis=-1), 1.0)
