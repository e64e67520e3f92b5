"""Feature statistics (streaming, float64) and the Frechet distance between two Gaussians.

A statistics file is an `.npz` with `mu`, `sigma` (as pytorch-fid/TTUR files) plus `count`,
`protocol`, `network_sha256`, `dataset`, `split`: numbers from another preprocessing protocol or
another network are not comparable, so loading refuses a mismatch instead of giving a wrong FID.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import scipy.linalg

from diffusion_jax.errors import UserError

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FidStatistics:
    """Mean and (unbiased, ddof=1) covariance of Inception features, and what made them."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    protocol: str | None = None
    network_sha256: str | None = None
    dataset: str = ""
    split: str = ""


class RunningStats:
    """Accumulates sum and sum of outer products in float64, batch by batch."""

    def __init__(
        self, dim: int = 2048, *, protocol: str | None = None, network_sha256: str | None = None
    ) -> None:
        self.dim = dim
        self.protocol = protocol
        self.network_sha256 = network_sha256
        self.count = 0
        self._sum = np.zeros(dim, np.float64)
        self._outer = np.zeros((dim, dim), np.float64)

    def update(self, features: np.ndarray) -> None:
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must be [N, {self.dim}]; got {f.shape}")
        if not np.isfinite(f).all():
            raise UserError("Inception features contain NaN/inf; check the input images.")
        self.count += f.shape[0]
        self._sum += f.sum(axis=0)
        self._outer += f.T @ f

    def finalize(self, *, dataset: str = "", split: str = "") -> FidStatistics:
        n = self.count
        if n < 2:
            raise UserError(f"FID statistics need at least 2 images; got {n}.")
        mu = self._sum / n
        sigma = (self._outer - n * np.outer(mu, mu)) / (n - 1)
        sigma = (sigma + sigma.T) / 2  # exact symmetry; rounding can break it by an ulp
        return FidStatistics(mu, sigma, n, self.protocol, self.network_sha256, dataset, split)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # No `disp=`: scipy >= 1.18 removed it; without it every version returns just the root.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = scipy.linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """`|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))`, computed exactly as pytorch-fid/TTUR."""
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise UserError(
            f"FID statistics have different shapes: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}."
        )
    for a in (mu1, mu2, sigma1, sigma2):
        if not np.isfinite(a).all():
            raise UserError("FID statistics contain NaN or inf.")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # Singular product: add eps to the diagonals, as pytorch-fid and TTUR do.
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise UserError(
                f"sqrtm(sigma1 sigma2) has an imaginary component {m:.3g}: the statistics are "
                "numerically unusable (too few images for a 2048-d covariance?)."
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_statistics(a: FidStatistics, b: FidStatistics) -> float:
    """FID between two statistics; refuses to mix protocols or networks."""
    if a.protocol and b.protocol and a.protocol != b.protocol:
        raise UserError(
            f"Statistics use different preprocessing protocols ({a.protocol!r} vs "
            f"{b.protocol!r}); their FID would be meaningless. Recompute one of them."
        )
    if a.network_sha256 and b.network_sha256 and a.network_sha256 != b.network_sha256:
        raise UserError(
            f"Statistics come from different Inception weights ({a.network_sha256[:12]} vs "
            f"{b.network_sha256[:12]}); recompute one of them with the same weights."
        )
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def save_statistics(path: str | Path, stats: FidStatistics) -> None:
    """Writes `stats` atomically: a temporary file in the same folder, then `os.replace`, so a
    reader (another process, a later run) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(
                f,
                mu=stats.mu,
                sigma=stats.sigma,
                count=np.int64(stats.count),
                protocol=stats.protocol or "",
                network_sha256=stats.network_sha256 or "",
                dataset=stats.dataset,
                split=stats.split,
                format_version=np.int64(FORMAT_VERSION),
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def is_statistics_file(path: str | Path) -> bool:
    try:
        with np.load(path) as z:
            return isinstance(z, np.lib.npyio.NpzFile) and {"mu", "sigma"} <= set(z.files)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def load_statistics(
    path: str | Path,
    *,
    expect_protocol: str | None = None,
    expect_network: str | None = None,
    allow_unlabeled: bool = False,
) -> FidStatistics:
    """Reads a statistics file, refusing one made with another protocol or network.

    Files without labels (pytorch-fid/TTUR `mu`/`sigma` only) are refused when an expectation
    is given, unless `allow_unlabeled`: the caller then vouches for how they were made.
    """
    path = Path(path)
    try:
        with np.load(path) as z:
            if not isinstance(z, np.lib.npyio.NpzFile) or not {"mu", "sigma"} <= set(z.files):
                raise UserError(f"{path} is not a FID statistics file (needs 'mu' and 'sigma').")
            meta = {k: z[k].item() if k in z.files else None for k in _META}
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"Cannot read FID statistics {path}: {e}") from e
    stats = FidStatistics(
        mu,
        sigma,
        int(meta["count"] or 0),
        str(meta["protocol"] or "") or None,
        str(meta["network_sha256"] or "") or None,
        str(meta["dataset"] or ""),
        str(meta["split"] or ""),
    )
    for want, have, what in (
        (expect_protocol, stats.protocol, "preprocessing protocol"),
        (expect_network, stats.network_sha256, "Inception network (sha256)"),
    ):
        if want is None:
            continue
        if have is None and not allow_unlabeled:
            raise UserError(
                f"{path} does not record its {what}; expected {want!r}. Recompute it with "
                "diffusion_jax.fid, or pass allow_unlabeled / --allow_unlabeled_stats if you "
                "know it was made the same way."
            )
        if have is not None and have != want:
            raise UserError(
                f"{path} was computed with {what} {have!r}, but this run uses {want!r}; FIDs "
                "across them are not comparable. Recompute the statistics."
            )
    return stats


_META = ("count", "protocol", "network_sha256", "dataset", "split")
