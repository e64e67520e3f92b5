"""FID math and statistics files (no network, no data needed)."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion_jax.errors import UserError
from diffusion_jax.fid.stats import (
    FidStatistics,
    RunningStats,
    fid_from_statistics,
    frechet_distance,
    load_statistics,
    save_statistics,
)


def _independent_fid(mu1, s1, mu2, s2) -> float:
    """tr(sqrt(S1 S2)) via symmetric eigendecompositions: sqrt(S1) S2 sqrt(S1) is SPD."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def _gaussian_moments(rng, n: int, d: int, shift: float):
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    x = rng.normal(size=(n, d)) @ a + shift
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("d", [3, 64])
def test_frechet_distance_matches_independent_float64(d: int) -> None:
    rng = np.random.default_rng(d)
    mu1, s1 = _gaussian_moments(rng, 4 * d, d, 0.0)
    mu2, s2 = _gaussian_moments(rng, 4 * d, d, 0.3)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_independent_fid(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)
    assert got > 0


def test_frechet_distance_closed_form_1d() -> None:
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_fid_of_identical_statistics_is_zero() -> None:
    rng = np.random.default_rng(0)
    mu, s = _gaussian_moments(rng, 300, 32, 1.0)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8


def test_singular_covariances_use_the_epsilon_fix() -> None:
    # Rank-deficient covariances (fewer samples than dims), as with small sample sets.
    rng = np.random.default_rng(1)
    mu1, s1 = _gaussian_moments(rng, 5, 20, 0.0)
    mu2, s2 = _gaussian_moments(rng, 5, 20, 0.0)
    fid = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(fid)


def test_running_stats_independent_of_batching() -> None:
    rng = np.random.default_rng(2)
    f = rng.random((103, 16)).astype(np.float32)
    results = []
    for bs in (1, 7, 103):
        rs = RunningStats(16)
        for i in range(0, len(f), bs):
            rs.update(f[i : i + bs])
        results.append(rs.finalize())
    ref_mu, ref_sigma = f.astype(np.float64).mean(0), np.cov(f.astype(np.float64), rowvar=False)
    for r in results:
        assert r.count == 103
        np.testing.assert_allclose(r.mu, ref_mu, rtol=1e-12)
        np.testing.assert_allclose(r.sigma, ref_sigma, rtol=1e-10, atol=1e-13)
        np.testing.assert_array_equal(r.sigma, r.sigma.T)


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_images_is_an_error(n: int) -> None:
    rs = RunningStats(4)
    rs.update(np.ones((n, 4), np.float32))
    with pytest.raises(UserError, match="at least 2 images"):
        rs.finalize()


def test_non_finite_features_are_an_error() -> None:
    rs = RunningStats(2)
    with pytest.raises(UserError, match="NaN"):
        rs.update(np.array([[1.0, np.nan]], np.float32))


def _stats(protocol="tf", network="abc123", d=8, seed=0) -> FidStatistics:
    rng = np.random.default_rng(seed)
    mu, s = _gaussian_moments(rng, 50, d, 0.0)
    return FidStatistics(mu, s, 50, protocol, network, "unit", "test")


def test_statistics_file_roundtrip(tmp_path) -> None:
    s = _stats()
    save_statistics(tmp_path / "s.npz", s)
    back = load_statistics(tmp_path / "s.npz", expect_protocol="tf", expect_network="abc123")
    np.testing.assert_array_equal(back.mu, s.mu)
    np.testing.assert_array_equal(back.sigma, s.sigma)
    assert (back.count, back.protocol, back.network_sha256, back.dataset, back.split) == (
        50,
        "tf",
        "abc123",
        "unit",
        "test",
    )


def test_statistics_from_another_protocol_or_network_are_refused(tmp_path) -> None:
    save_statistics(tmp_path / "s.npz", _stats(protocol="pytorch_fid"))
    with pytest.raises(UserError, match="protocol 'pytorch_fid'.*uses 'tf'"):
        load_statistics(tmp_path / "s.npz", expect_protocol="tf")
    with pytest.raises(UserError, match="Inception network"):
        load_statistics(tmp_path / "s.npz", expect_network="other")
    with pytest.raises(UserError, match="different preprocessing protocols"):
        fid_from_statistics(_stats("tf"), _stats("pytorch_fid"))
    with pytest.raises(UserError, match="different Inception weights"):
        fid_from_statistics(_stats(network="a" * 64), _stats(network="b" * 64))


def test_unlabeled_statistics_need_explicit_consent(tmp_path) -> None:
    s = _stats()
    np.savez(tmp_path / "ttur.npz", mu=s.mu, sigma=s.sigma)  # TTUR / pytorch-fid layout
    with pytest.raises(UserError, match="does not record"):
        load_statistics(tmp_path / "ttur.npz", expect_protocol="tf")
    back = load_statistics(tmp_path / "ttur.npz", expect_protocol="tf", allow_unlabeled=True)
    assert back.protocol is None
    assert fid_from_statistics(back, s) == pytest.approx(0.0, abs=1e-8)


def test_not_a_statistics_file(tmp_path) -> None:
    np.savez(tmp_path / "x.npz", x=np.zeros(3))
    with pytest.raises(UserError, match="not a FID statistics file"):
        load_statistics(tmp_path / "x.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="Cannot read"):
        load_statistics(tmp_path / "junk.npz")


def test_mismatched_shapes_are_an_error() -> None:
    with pytest.raises(UserError, match="different shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
