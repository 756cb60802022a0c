"""Precision, recall, density, coverage and the Fréchet distance on point sets with known
answers, against a brute-force computation written here, and the metric in a loop run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
from conftest import tiny_config

from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop
from lmcollapse.metrics.prdc import frechet_distance, prdc


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """The four definitions, point by point (Kynkäänniemi et al. 2019; Naeem et al. 2020)."""
    def radii(points):
        out = []
        for p in points:
            d = sorted(float(np.linalg.norm(p - q)) for q in points)
            out.append(d[k])  # d[0] is the point itself
        return out

    r_real, r_fake = radii(real), radii(fake)
    inside = [[float(np.linalg.norm(y - x)) < r for x, r in zip(real, r_real, strict=True)]
              for y in fake]  # inside[j][i]: fake j in real i's ball
    precision = np.mean([any(row) for row in inside])
    recall = np.mean([any(float(np.linalg.norm(x - y)) < r
                          for y, r in zip(fake, r_fake, strict=True)) for x in real])
    density = sum(sum(row) for row in inside) / (k * len(fake))
    coverage = np.mean([any(inside[j][i] for j in range(len(fake))) for i in range(len(real))])
    return {"precision": precision, "recall": recall, "density": density,
            "coverage": coverage}


def test_identical_sets_are_fully_precise_and_covered():
    x = np.random.default_rng(0).normal(size=(80, 4))
    got = prdc(x, x.copy(), nearest_k=3)
    assert got["precision"] == got["recall"] == got["coverage"] == 1.0
    assert got == pytest.approx(brute_force(x, x, 3))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_a_lost_region_is_precise_but_recalls_less():
    """The fake set keeps only the real points of one side (a mode dropped): every fake point
    is real (precision 1) but the other side is neither recalled nor covered."""
    x = np.random.default_rng(1).normal(size=(200, 3))
    fake = x[x[:, 0] < -0.3]
    got = prdc(x, fake, nearest_k=4)
    assert got["precision"] == 1.0
    assert got["recall"] < 0.7 and got["coverage"] < 0.6
    assert got == pytest.approx(brute_force(x, fake, 4))


def test_disjoint_clusters_score_zero_and_far():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(60, 3)), rng.normal(size=(60, 3)) + 50.0
    assert prdc(x, y, nearest_k=5) == {"precision": 0.0, "recall": 0.0, "density": 0.0,
                                       "coverage": 0.0}
    assert frechet_distance(x, y) == pytest.approx(3 * 50.0**2, rel=0.02)


def test_overlapping_random_sets_match_brute_force():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(70, 5)), rng.normal(size=(50, 5)) * 1.3 + 0.4
    got = prdc(x, y, nearest_k=5)
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1
    assert got == pytest.approx(brute_force(x, y, 5))


def test_frechet_distance_of_shifted_gaussians_is_the_closed_form():
    """N(0, diag(s1^2)) vs N(mu, diag(s2^2)): |mu|^2 + sum (s1 - s2)^2."""
    rng = np.random.default_rng(4)
    s1, s2, mu = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5]), np.array([3.0, -1.0, 2.0])
    x = rng.normal(size=(200_000, 3)) * s1
    y = rng.normal(size=(200_000, 3)) * s2 + mu
    closed = float((mu**2).sum() + ((s1 - s2) ** 2).sum())  # 14 + 1.25
    assert frechet_distance(x, y) == pytest.approx(closed, rel=0.01)


def test_frechet_distance_matches_scipy_sqrtm_on_sample_moments():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    x = rng.normal(size=(300, 6)) @ a
    y = rng.normal(size=(250, 6)) @ b + 0.7
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s_x @ s_y)
    expected = (((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s_x) + np.trace(s_y)
                - 2 * np.trace(root).real)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-8)


@pytest.mark.slow
def test_prdc_metric_reuses_mauve_features_and_matches_them(tmp_path):
    """prdc and mauve with the same featurizer and samples embed once per row; the values in
    metrics.json are those of the cached features."""
    cfg = tiny_config(tmp_path, "generations=1", "policies=[{name: replace}]",
                      "metrics.names=[prdc,mauve]", "metrics.prdc.nearest_k=3")
    CollapseLoop(cfg).run()
    seed = tmp_path / "quickstart" / "seed_0"
    gen = seed / "replace" / "gen_01"
    cached = sorted(p.name for p in gen.glob("features_*.npy"))
    assert len(cached) == 1 and cached[0].startswith("features_gen0_n")
    human = np.load(seed / "human" / cached[0])
    corpus = np.load(gen / cached[0])
    values = json.loads((gen / "metrics.json").read_text())["values"]
    expected = prdc(human, corpus, 3)
    for key in ("precision", "recall", "density", "coverage"):
        assert values[key] == pytest.approx(expected[key])
    assert values["frechet_distance"] == pytest.approx(frechet_distance(human, corpus))
    ref = json.loads((seed / "human" / "metrics.json").read_text())["values"]
    assert ref["recall"] > 0 and "mauve" in ref


def test_nearest_k_must_leave_neighbours(tmp_path):
    cfg = tiny_config(tmp_path, "metrics.names=[prdc]", "metrics.prdc.num_samples=4",
                      "metrics.prdc.nearest_k=4")
    with pytest.raises(ConfigError, match=r"metrics.prdc.nearest_k: .*Allowed: 1..3"):
        CollapseLoop(cfg).run()
    assert not (tmp_path / "quickstart").exists()
