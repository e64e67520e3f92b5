"""Stand-alone FID in the same JAX process: Inception features, statistics, distance.

What belongs here: everything an FID needs and nothing of this project's models or training
(an import-linter contract): the Inception network (`inception`) and its weights (`weights`,
`torch_files`), each protocol's preprocessing (`preprocess`), streaming statistics and the
distance (`stats`), and the `diffusion-jax-fid` CLI (`__main__`).

    extractor = FeatureExtractor()                      # finds/verifies the weights
    stats = statistics_of(batches_of_uint8, extractor)  # streaming mean/covariance
    fid = fid_from_statistics(stats, load_statistics("ref.npz",
                              expect_protocol=extractor.protocol,
                              expect_network=extractor.network_sha256))

Imports only jax, numpy, scipy (and tqdm for progress); never torch or tensorflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffusion_jax.errors import UserError
from diffusion_jax.fid import inception
from diffusion_jax.fid.preprocess import (
    PROTOCOLS,
    check_images,
    check_protocol,
    preprocess,
)
from diffusion_jax.fid.stats import (
    FidStatistics,
    RunningStats,
    fid_from_statistics,
    frechet_distance,
    load_statistics,
    save_statistics,
)
from diffusion_jax.fid.weights import NetworkWeights, load_weights
from diffusion_jax.pixels import quantize  # the project's one rounding rule, re-exported

__all__ = [
    "PROTOCOLS",
    "FeatureExtractor",
    "FidStatistics",
    "RunningStats",
    "fid_from_statistics",
    "frechet_distance",
    "load_statistics",
    "quantize",
    "save_statistics",
    "statistics_of",
]


def _replicated(sharding: jax.sharding.Sharding) -> NamedSharding:
    devices = sorted(sharding.device_set, key=lambda d: d.id)
    return NamedSharding(Mesh(np.array(devices), ("d",)), PartitionSpec())


class FeatureExtractor:
    """uint8 images -> 2048-d pool3 features, compiled once per image shape.

    `batch_size` images go through the network at a time (the last batch is zero-padded, so
    only one shape is compiled). With `batch_sharding` each batch is split over its devices
    (`batch_size` must divide evenly); in a multi-process run every process must pass the
    same images and gets all features back.
    """

    def __init__(
        self,
        weights_path: str | None = None,
        protocol: str = "tf",
        batch_size: int = 200,
        batch_sharding: jax.sharding.Sharding | None = None,
        *,
        weights: NetworkWeights | None = None,
    ) -> None:
        self.protocol = check_protocol(protocol)
        if batch_size < 1:
            raise UserError(f"FID batch_size must be >= 1; got {batch_size}.")
        self.batch_size = batch_size
        self.batch_sharding = batch_sharding
        weights = weights or load_weights(weights_path)
        self.network_sha256: str = weights.network_sha256
        self.weights_origin: str = weights.origin
        params = inception.fold_batchnorm(weights.raw)
        if batch_sharding is not None:
            try:
                batch_sharding.shard_shape((batch_size, 1, 1, 1))
            except ValueError as e:
                raise UserError(
                    f"FID batch_size {batch_size} does not divide evenly over the batch "
                    f"sharding ({len(batch_sharding.device_set)} devices): {e}"
                ) from e
            replicated = _replicated(batch_sharding)
            self._params = jax.device_put(params, replicated)
            self._fn: Callable = jax.jit(
                self._forward, in_shardings=(replicated, batch_sharding), out_shardings=replicated
            )
        else:
            self._params = jax.device_put(params)
            self._fn = jax.jit(self._forward)

    def _forward(self, params: inception.Params, images: jax.Array) -> jax.Array:
        return inception.apply(params, preprocess(images, self.protocol))

    def features(self, images_uint8: np.ndarray) -> np.ndarray:
        """`[N, 2048]` float32 features (host) of uint8 `[N, H, W, 1|3]` images."""
        images = check_images(images_uint8)
        n, b = images.shape[0], self.batch_size
        out = np.empty((n, inception.FEATURE_DIM), np.float32)
        pending: tuple[int, int, jax.Array] | None = None
        for start in range(0, n, b):
            chunk = images[start : start + b]
            m = chunk.shape[0]
            if m < b:
                chunk = np.concatenate([chunk, np.zeros((b - m, *chunk.shape[1:]), np.uint8)])
            if self.batch_sharding is not None:
                chunk = jax.device_put(chunk, self.batch_sharding)
            feats = self._fn(self._params, chunk)  # async: overlaps the previous fetch
            if pending is not None:
                out[pending[0] : pending[0] + pending[1]] = np.asarray(pending[2])[: pending[1]]
            pending = (start, m, feats)
        if pending is not None:
            out[pending[0] : pending[0] + pending[1]] = np.asarray(pending[2])[: pending[1]]
        return out


def statistics_of(
    images: Iterable[np.ndarray],
    extractor: FeatureExtractor,
    *,
    progress: bool = True,
    total: int | None = None,
    dataset: str = "",
    split: str = "",
) -> FidStatistics:
    """Streams uint8 batches through `extractor` into float64 mean/covariance.

    `total` (number of images, optional) sizes the progress bar.
    """
    running = RunningStats(
        inception.FEATURE_DIM,
        protocol=extractor.protocol,
        network_sha256=extractor.network_sha256,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="img", desc=f"FID features ({extractor.protocol})")
    try:
        for batch in images:
            running.update(extractor.features(batch))
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return running.finalize(dataset=dataset, split=split)
