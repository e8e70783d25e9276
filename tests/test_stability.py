"""Stability analysis: Jury criterion vs direct eigenvalues, and the tool on a tiny trained run."""

import json

import numpy as np
import pytest
from tiny_run import tiny_run

from mdn_jax.analysis.stability import jury_stable, margin, spectral_radius, step_matrix
from mdn_jax.cli import main


def test_step_matrix_charpoly(rng):
    a, m, b, h = rng.random(50), rng.random(50), rng.random(50), 2 * rng.random(50)
    A = step_matrix(a, m, b, h)
    np.testing.assert_allclose(np.trace(A, axis1=-2, axis2=-1), a + m - b * h, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(A), a * m, atol=1e-12)


def test_jury_equals_eigenvalue_test(rng):
    n = 200_000
    a, m = rng.random(n), rng.random(n)
    b = rng.random(n) * 3
    h = rng.uniform(-1.0, 3.0, n)  # negative h exercises the lower Jury bound
    jury, rho = jury_stable(a, m, b, h), spectral_radius(a, m, b, h)
    far = np.abs(rho - 1) > 1e-9  # away from the boundary, where rounding can decide either way
    assert 0.1 < jury.mean() < 0.9
    np.testing.assert_array_equal(jury[far], (rho < 1)[far])
    # for beta h >= 0 it is the spec's 0 <= beta h < (1 + alpha)(1 + mu)
    pos = (b * h >= 0) & far
    np.testing.assert_array_equal(jury[pos], (margin(a, m, b, h) > 0)[pos])


def test_spec_counterexample_plain_mode():
    """Spec 6: plain mode, eta 1.9, factor 4, raw gates 0.999, mu = e^-2 -> radius ~1.71 (unstable)."""
    theta = np.arctan(1.9 * 4)
    alpha, beta = np.cos(theta) ** 2 * 0.999, np.sin(theta) ** 2 * 0.999
    mu = np.exp(-2.0)
    assert not jury_stable(alpha, mu, beta, 1.9)
    assert spectral_radius(alpha, mu, beta, 1.9) == pytest.approx(1.71, abs=0.01)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def test_tool_on_tiny_run(run_dir, tmp_path, capsys):
    js, png = tmp_path / "s.json", tmp_path / "s.png"
    rc = main(["stability", "--checkpoint", run_dir, "--batch-size", "2", "--json", str(js), "--plot", str(png)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rep = json.loads(js.read_text())
    assert [lay["layer"] for lay in rep["layers"]] == [0, 1] and all(lay["kind"] == "mdn" for lay in rep["layers"])
    assert len(rep["layers"][0]["heads"]) == 4 and rep["tokens"] > 0
    assert rep["jury_holds"] and rep["jury_agrees_with_eigenvalues"] and rep["max_modulus"] < 1
    # default p = alpha k: beta h = alpha beta eta <= eta/4 < 1/2, so the margin exceeds 1/2 (spec 6)
    assert rep["min_margin"] > 0.5
    for lay in rep["layers"]:
        for h in lay["heads"]:
            assert 0 <= h["max_beta_h"] < 0.5
    assert "Jury condition holds" in out
    try:
        import matplotlib  # noqa: F401
        assert png.exists() and png.stat().st_size > 0
    except ImportError:
        pass


@pytest.mark.parametrize("args, msg", [
    (["--checkpoint", "/nonexistent/run"], "checkpoint directory not found"),
    (["--data", "/nonexistent.txt"], "data path not found"),
    (["--batches", "0"], "must be positive"),
])
def test_bad_input(run_dir, capsys, args, msg):
    if "--checkpoint" not in args:
        args = ["--checkpoint", run_dir, *args]
    rc = main(["stability", *args])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err
