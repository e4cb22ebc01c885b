"""Ensembling equals diffusers' Marigold pipelines' ensemble_depth / ensemble_normals / ensemble_intrinsics."""

import contextlib

import numpy as np
import pytest
import scipy.optimize
import torch
from diffusers import MarigoldDepthPipeline, MarigoldIntrinsicsPipeline, MarigoldNormalsPipeline

from marigold_jax import ensemble


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


def _nhwc(x):
    return np.moveaxis(x.numpy(), -3, -1)


def _depth_members(seed, e=3, h=21, w=30):
    """Affinely distorted noisy copies of one depth map in [0, 1], [E, H, W, 1] float32."""
    rng = np.random.default_rng(seed)
    base = rng.random((h, w, 1))
    members = [
        np.clip(base * rng.uniform(0.6, 1.4) + rng.uniform(-0.2, 0.2) + 0.05 * rng.standard_normal(base.shape), 0, 1)
        for _ in range(e)
    ]
    return np.stack(members).astype(np.float32)


@contextlib.contextmanager
def _diffusers_minimize(replace_objective=None):
    """Record diffusers' call to scipy.optimize.minimize; optionally swap its objective for ours on the same members."""
    calls = []
    real = scipy.optimize.minimize

    def recording(fun, x0, **kwargs):
        calls.append((fun, x0.copy(), kwargs))
        if replace_objective is not None:
            members = _nhwc(fun.keywords["depth"])
            return real(lambda x: replace_objective(x, members), x0, **kwargs)
        return real(fun, x0, **kwargs)

    scipy.optimize.minimize = recording
    try:
        yield calls
    finally:
        scipy.optimize.minimize = real


@pytest.mark.parametrize("shift_invariant", [True, False])
@pytest.mark.parametrize("reduction", ["median", "mean"])
@pytest.mark.parametrize("e", [3, 4])
def test_depth_objective_and_initialisation_equal_diffusers(shift_invariant, reduction, e):
    members = _depth_members(e, e=e)
    with _diffusers_minimize() as calls:
        MarigoldDepthPipeline.ensemble_depth(_nchw(members), True, shift_invariant, reduction=reduction)
    fun, x0, kwargs = calls[0]
    assert kwargs == dict(method="BFGS", tol=1e-3, options={"maxiter": 2, "disp": False})
    np.testing.assert_array_equal(ensemble.depth_alignment_init(members, shift_invariant), x0)
    rng = np.random.default_rng(0)
    for x in [x0, *(x0 * rng.uniform(0.5, 1.5, x0.shape) + rng.normal(0, 0.1, x0.shape) for _ in range(5))]:
        ours = ensemble.depth_alignment_cost(x, members, shift_invariant, reduction)
        np.testing.assert_allclose(ours, fun(x), rtol=2e-6)


@pytest.mark.parametrize("shift_invariant", [True, False])
@pytest.mark.parametrize("reduction", ["median", "mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_depth_ensemble_equals_diffusers_given_the_same_objective_values(shift_invariant, reduction, seed):
    """Same optimiser, options, initialisation, alignment, reduction and normalisation: with diffusers' BFGS fed our
    objective (see the module docstring of `marigold_jax.ensemble` for why bit-level objective values matter), the
    ensembled depth and its uncertainty are equal."""
    members = _depth_members(seed, e=3 + seed)

    def objective(x, m):
        return ensemble.depth_alignment_cost(x, m, shift_invariant, reduction)

    with _diffusers_minimize(objective):
        ref, ref_unc = MarigoldDepthPipeline.ensemble_depth(_nchw(members), True, shift_invariant, True, reduction)
    got, unc = ensemble.ensemble_depth(members, True, shift_invariant, True, reduction)
    np.testing.assert_allclose(got, _nhwc(ref), atol=1e-6)
    np.testing.assert_allclose(unc, _nhwc(ref_unc), atol=1e-6)
    assert got.shape == (1, 21, 30, 1) and np.isclose(got.max(), 1) and (got.min() == 0 or not shift_invariant)


def test_depth_alignment_fit_runs_at_max_res_like_diffusers():
    members = _depth_members(5, h=40, w=25)

    def objective(x, m):
        assert m.shape == (3, 16, 10, 1)
        return ensemble.depth_alignment_cost(x, m)

    with _diffusers_minimize(objective):
        ref, _ = MarigoldDepthPipeline.ensemble_depth(_nchw(members), max_res=16)
    got, _ = ensemble.ensemble_depth(members, max_res=16)
    np.testing.assert_allclose(got, _nhwc(ref), atol=1e-6)


@pytest.mark.parametrize("reduction", ["median", "mean"])
def test_depth_ensemble_without_solver_steps_equals_diffusers(reduction):
    members = _depth_members(7, e=5)
    ref, ref_unc = MarigoldDepthPipeline.ensemble_depth(
        _nchw(members), output_uncertainty=True, reduction=reduction, max_iter=0
    )
    got, unc = ensemble.ensemble_depth(members, output_uncertainty=True, reduction=reduction, max_iter=0)
    np.testing.assert_allclose(got, _nhwc(ref), atol=1e-6)
    np.testing.assert_allclose(unc, _nhwc(ref_unc), atol=1e-6)


def test_absolute_depth_ensembling_is_refused():
    with pytest.raises(ValueError, match="scale-invariant"):
        ensemble.ensemble_depth(_depth_members(0), scale_invariant=False, shift_invariant=False)


@pytest.mark.parametrize("reduction", ["closest", "mean"])
@pytest.mark.parametrize("e", [3, 4])
def test_normals_ensemble_equals_diffusers(reduction, e):
    normals = ensemble.normalize_normals(np.random.default_rng(e).standard_normal((e, 9, 11, 3)).astype(np.float32))
    ref, ref_unc = MarigoldNormalsPipeline.ensemble_normals(_nchw(normals), True, reduction)
    got, unc = ensemble.ensemble_normals(normals, True, reduction)
    np.testing.assert_allclose(got, _nhwc(ref), atol=1e-6)
    np.testing.assert_allclose(unc, _nhwc(ref_unc), atol=1e-6)
    assert got.shape == (1, 9, 11, 3) and unc.shape == (1, 9, 11, 1)


@pytest.mark.parametrize("reduction", ["median", "mean"])
@pytest.mark.parametrize("e", [3, 4])
def test_intrinsics_ensemble_equals_diffusers(reduction, e):
    targets = np.random.default_rng(e).random((e, 2, 7, 5, 3)).astype(np.float32)
    ref, ref_unc = MarigoldIntrinsicsPipeline.ensemble_intrinsics(
        torch.from_numpy(np.moveaxis(targets, -1, 2)), True, reduction
    )
    got, unc = ensemble.ensemble_intrinsics(targets, True, reduction)
    np.testing.assert_allclose(got, np.moveaxis(ref.numpy(), 1, -1), atol=1e-6)
    np.testing.assert_allclose(unc, np.moveaxis(ref_unc.numpy(), 1, -1), atol=1e-6)


def test_lower_median_is_torch_median_for_even_counts():
    x = np.random.default_rng(0).random((4, 6, 5)).astype(np.float32)
    np.testing.assert_array_equal(ensemble.lower_median(x), torch.from_numpy(x).median(dim=0).values.numpy())
