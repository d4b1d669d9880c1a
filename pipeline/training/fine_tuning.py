"""Fine-tuning: a new model that starts from the networks of a trained bundle (``batml train --from``).

The parent bundle's networks give their weights to the new model's networks of the same rows
(``cnn_8`` to ``cnn_8``...), layer by layer, wherever the shapes agree: every layer but the
output layer when the class list changed (a new output layer, freshly initialised, for the new
classes), all of them when it did not. Training then runs in two phases
(:func:`pipeline.training.networks.fit_networks`): the new layers alone, the parent's frozen,
then every layer at a lower learning rate; a hybrid's boosters are trained anew on the new
embeddings. The new bundle's manifest records its parent and carries the parent's source and
licence (a model made from research-only weights stays research-only).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.training import TrainingError

#: What ``--from`` without a path means: the bundled default model.
DEFAULT_PARENT = "default"


def load_parent(path: str | os.PathLike, arch, spectrogram_settings):
    """The parent bundle (the bundled model for :data:`DEFAULT_PARENT`), checked against the new model.

    Raises
    ------
    TrainingError
        When the parent has no network for one of the new architecture's rows, or was made for
        other spectrogram settings than ``spectrogram_settings`` (when given).
    """
    from pipeline.model.bundle import DEFAULT_BUNDLE, load_bundle

    bundle = load_bundle(DEFAULT_BUNDLE if str(path) == DEFAULT_PARENT else Path(path))
    missing = [row for row in arch.network_rows if row not in bundle.spec.network_rows]
    if missing:
        raise TrainingError(
            f"--from {bundle.path}: a {bundle.architecture} model has no {', '.join(missing)} network to start a "
            f"{arch.name} from (its networks: {', '.join(bundle.spec.network_rows)})"
        )
    if spectrogram_settings is not None and spectrogram_settings.fingerprint() != bundle.fingerprint:
        raise TrainingError(
            f"--from {bundle.path}: the parent was trained on other spectrogram settings ({bundle.fingerprint}); "
            f"the cube has {spectrogram_settings.fingerprint()}"
        )
    return bundle


def _layers_with_weights(network) -> list:
    return [layer for layer in network.layers if layer.weights]


def fixed_layers(network) -> set[str]:
    """Names of the layers whose weights are constants, never trained (e.g. the frequency flip of
    a converted reference network, :func:`pipeline.model.reference.reference_network`).

    Read from the layers' ``trainable`` flags as built or saved: call it before any training
    phase freezes layers.
    """
    return {layer.name for layer in network.layers if layer.weights and not layer.trainable}


def _units(layer):
    return layer.get_config().get("units")


def _head(layer) -> tuple:
    return _units(layer), layer.get_config().get("activation")


def _copy_with_head(network, head):
    """A copy of a trained network, its weights included, whose output layer is the parent's when
    it has the units and activation of ``head`` (the new network's output layer), else a fresh
    copy of ``head``."""
    import keras

    copy = keras.models.clone_model(network)
    copy.set_weights(network.get_weights())
    output = copy.layers[-1]
    if _head(output) == _head(head):
        return copy
    fresh = type(head).from_config(head.get_config())
    return keras.Model(copy.input, fresh(output.input), name=copy.name)


def transfer_weights(parent, networks: dict) -> dict[str, list[str]]:
    """Copy the parent's weights into ``networks`` (row -> Keras model) where shapes agree.

    A parent network with fixed layers that the new one lacks (a converted reference network
    reads batml's windows through a constant frequency flip) is copied whole instead, its own
    layers and their settings (``--params`` then changes only the training: rate, batch,
    epochs), with the new network's output layer where the parent's has other units or another
    activation: ``networks[row]`` is replaced by that copy.

    Returns
    -------
    dict of str to list of str
        For each row, the names of the layers that did not take the parent's weights (the
        new output layer): what the first phase of fine-tuning trains.
    """
    new_layers = {}
    for row, network in networks.items():
        parent_network = parent.network(row)
        target = _layers_with_weights(network)
        if fixed_layers(parent_network) - fixed_layers(network):
            if _units(_layers_with_weights(parent_network)[-2]) != _units(target[-2]):  # the embedding
                raise TrainingError(
                    f"--from {parent.path}: its {row} network's embedding differs from the new one's: give the "
                    f"same hyperparameters (--params) as the parent's"
                )
            networks[row] = network = _copy_with_head(parent_network, target[-1])
            new_layers[row] = [network.layers[-1].name]
            continue
        source = _layers_with_weights(parent_network)
        if len(source) != len(target):
            raise TrainingError(
                f"--from {parent.path}: its {row} network has {len(source)} layers with weights, the new one "
                f"{len(target)}: give the same hyperparameters (--params) as the parent's"
            )
        fresh = []
        for old, new in zip(source, target):
            if [w.shape for w in old.get_weights()] == [w.shape for w in new.get_weights()]:
                new.set_weights(old.get_weights())
            else:
                fresh.append(new.name)
        if len(fresh) > 1:
            raise TrainingError(
                f"--from {parent.path}: the {row} network differs from the parent's in more than its output layer "
                f"({', '.join(fresh)}): give the same hyperparameters (--params) as the parent's"
            )
        new_layers[row] = fresh or [target[-1].name]
    return new_layers


def parent_record(parent, new_layers: dict[str, list[str]]) -> dict:
    """What the manifest says of the parent: where it was, what it was, what was replaced."""
    from pipeline.detection.archive import model_identity

    return {
        "path": str(parent.path),
        "identity": model_identity(parent.path),
        "architecture": parent.architecture,
        "classes": list(parent.classes),
        "replaced_layers": new_layers,
    }


def joined_licence(*licences: str | None) -> str | None:
    """The terms of use of a model made from several things (weights, data), each kept once."""
    kept = list(dict.fromkeys(str(item).strip() for item in licences if item and str(item).strip()))
    return "; ".join(kept) or None
