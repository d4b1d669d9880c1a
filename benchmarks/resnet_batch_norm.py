"""A ResNet50 at inference, with batch norm's moving averages against statistics re-estimated
on training windows (``pipeline.training.batch_norm``), epoch by epoch.

Trains the network of row ``resnet_8`` (the reference system's settings: L2 0.005 on every
kernel, batch-norm momentum 0.99) on the training windows of a simulated archive, in memory,
and after each epoch scores the windows of the test split in inference mode twice: with the
moving averages Keras kept, and with the statistics re-estimated over 2,048 training windows
(then the moving averages are put back, so that the next epoch goes on as Keras alone would).
Prints, each time: the cross-entropy (without the L2 penalties), the window detection AP (call
score ``1 - P(not call)`` against call/not-call windows), the share of call and of other windows
whose call score passes 0.5 (what detection asks of a peak), and the median over the batch
norms of moving variance / re-estimated variance (above 1: the moving averages still remember
larger activations). ``--l2 0`` trains without the penalties.

Usage::

    python benchmarks/resnet_batch_norm.py --minutes 3 --epochs 3
    python benchmarks/resnet_batch_norm.py --minutes 3 --epochs 3 --l2 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    import keras
    import numpy as np
    import zarr
    from sklearn.metrics import average_precision_score

    from pipeline.annotations.dataset import read_dataset
    from pipeline.ingestion import ingest
    from pipeline.io.cube import open_cube
    from pipeline.model.params import load_params
    from pipeline.model.registry import build_networks, compile_network
    from pipeline.sampling import build_samples
    from pipeline.simulation import simulate_archive
    from pipeline.training.batch_norm import batch_norm_layers, estimation_batches, reestimate_batch_norm
    from pipeline.training.networks import BATCH_NORM_WINDOWS
    from pipeline.windows import read_windows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--l2", type=float, help="L2 weight (default: the row's, 0.005)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/batml-resnet-bn-bench"))
    args = parser.parse_args()

    root = args.data / f"sim-{args.minutes:g}min-seed{args.seed}"
    if not (root / "annotations.npz").exists():
        simulate_archive(root, minutes=args.minutes, seed=args.seed, progress=False)
    cube_path = args.data / f"cube-{args.minutes:g}min-seed{args.seed}.zarr"
    ingest(root, cube_path, cluster="local", n_workers=1, progress=False).require_complete()
    annotations = read_dataset(root / "annotations.npz")
    n_classes = len(annotations.classes)
    cube = open_cube(cube_path)
    spectrogram = zarr.open_array(f"{cube_path}/spectrogram", mode="r")
    train, _ = build_samples(annotations.train, cube, n_classes, seed=args.seed)
    test, _ = build_samples(annotations.test, cube, n_classes, seed=args.seed + 1)
    x, y = read_windows(spectrogram, train.columns), train.targets
    test_x, test_y = read_windows(spectrogram, test.columns), test.targets
    is_call = test_y[:, 0] < 0.5

    params = dict(load_params("resnet_8"))
    if args.l2 is not None:
        params["l2"] = args.l2
    keras.utils.set_random_seed(args.seed)
    network = build_networks("resnet8", n_classes, {"resnet_8": params})["resnet_8"]
    compile_network(network, params)
    layers = batch_norm_layers(network)
    batch = int(params["batch_size"])
    estimate_windows = [x[i] for i in estimation_batches(len(x), batch, BATCH_NORM_WINDOWS, args.seed)]
    print(f"{args.minutes:g} min simulated, {len(x)} training windows, {len(test_x)} test windows "
          f"({int(is_call.sum())} calls); L2 {params['l2']:g}, batch-norm momentum {params['batch_norm_momentum']:g}, "
          f"batch {batch}", flush=True)  # fmt: skip

    def scores(tag: str, variance_ratio: float | None = None) -> None:
        p = network.predict(test_x, batch_size=256, verbose=0)
        cross_entropy = float(np.mean(keras.losses.binary_crossentropy(test_y, p)))
        score = 1.0 - p[:, 0]
        ratio = f", moving/estimated variance {variance_ratio:.2f}" if variance_ratio is not None else ""
        print(f"  {tag:<28} cross-entropy {cross_entropy:6.3f}, window AP {average_precision_score(is_call, score):.3f}, "
              f"score > 0.5: calls {np.mean(score[is_call] > 0.5):.2f}, others {np.mean(score[~is_call] > 0.5):.2f}{ratio}",
              flush=True)  # fmt: skip

    for epoch in range(1, args.epochs + 1):
        t0 = time.process_time()
        history = network.fit(x, y, batch_size=batch, epochs=1, shuffle=True, verbose=0)
        cpu = time.process_time() - t0
        print(f"epoch {epoch}: loss (with L2) {history.history['loss'][0]:.3f}, "
              f"{cpu:.0f} CPU-s ({1000 * cpu / len(x):.1f} CPU-ms/window)", flush=True)  # fmt: skip
        moving = [layer.get_weights() for layer in layers]
        scores("moving averages")
        reestimate_batch_norm(network, estimate_windows)
        ratios = [m[3] / np.maximum(layer.moving_variance.numpy(), 1e-12) for m, layer in zip(moving, layers)]
        scores("re-estimated statistics", float(np.median([np.median(r) for r in ratios])))
        for layer, weights in zip(layers, moving):
            layer.set_weights(weights)


if __name__ == "__main__":
    main()
