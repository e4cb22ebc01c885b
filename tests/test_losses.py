"""Specification of the DAv2 training losses: invariances, hand-computed values, masks, trimming, jit and grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dav2_jax import losses


def _random_case(seed, b=2, h=12, w=10, invalid=0.2):
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0.1, 2.0, (b, h, w)).astype(np.float32)
    target = rng.uniform(0.1, 2.0, (b, h, w)).astype(np.float32)
    mask = rng.uniform(size=(b, h, w)) > invalid
    return jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask)


def test_normalize_disparity_hand_computed():
    x = jnp.array([[[1.0, 2.0, 3.0, 10.0]]])
    # median 2.5, mean absolute deviation (1.5 + 0.5 + 0.5 + 7.5) / 4 = 2.5
    out = losses.normalize_disparity(x, jnp.ones_like(x, bool))
    np.testing.assert_allclose(out, [[[-0.6, -0.2, 0.2, 3.0]]], rtol=1e-6)


def test_masked_median_matches_numpy_over_valid_pixels():
    pred, _, mask = _random_case(0, b=3, h=7, w=5)
    got = losses.masked_median(pred, mask)
    want = [np.median(np.asarray(pred[i])[np.asarray(mask[i])]) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("h", [7, 8])  # odd and even numbers of valid pixels per image
def test_masked_median_gradient_is_that_of_sorting(h):
    """The gradient reaches the middle pixel(s) of a stable sort, as when differentiating `jnp.sort`, ties included."""
    pred, _, mask = _random_case(1, b=3, h=h, w=5)
    pred = jnp.round(pred * 4) / 4  # many ties
    weights = jnp.array([1.0, -2.0, 3.0])

    def through_sort(x):
        flat = jnp.where(mask, x, jnp.inf).reshape(3, -1)
        count = mask.reshape(3, -1).sum(axis=1)
        ordered = jnp.sort(flat, axis=1)
        lower = jnp.take_along_axis(ordered, ((count - 1) // 2)[:, None], axis=1)[:, 0]
        upper = jnp.take_along_axis(ordered, (count // 2)[:, None], axis=1)[:, 0]
        return jnp.sum(weights * 0.5 * (lower + upper))

    got = jax.grad(lambda x: jnp.sum(weights * losses.masked_median(x, mask)))(pred)
    np.testing.assert_array_equal(got, jax.grad(through_sort)(pred))
    assert np.count_nonzero(np.asarray(got)) >= 3


def test_depth_loss_hand_computed_row():
    pred = jnp.array([[[0.0, 1.0, 2.0, 3.0]]])  # normalised: -1.5 -0.5 0.5 1.5
    target = jnp.array([[[1.0, 2.0, 3.0, 10.0]]])  # normalised: -0.6 -0.2 0.2 3.0
    mask = jnp.ones_like(pred, bool)
    # R = [-0.9, -0.3, 0.3, -1.5]; L_ssi = 3.0 / 4; L_gm = 3.0 / 4 (stride 1) + 1.2 / 2 (stride 2) + 0 + 0
    assert losses.ssi_loss(pred, target, mask) == pytest.approx(0.75, rel=1e-6)
    assert losses.gradient_matching_loss(pred, target, mask) == pytest.approx(1.35, rel=1e-6)
    loss, parts = losses.depth_loss(pred, target, mask)
    assert loss == pytest.approx(0.75 + 2.0 * 1.35, rel=1e-6)
    assert parts["ssi"] == pytest.approx(0.75, rel=1e-6) and parts["gm"] == pytest.approx(1.35, rel=1e-6)


def test_depth_loss_hand_computed_2x2_with_masked_pixel():
    mask = jnp.array([[[True, True], [True, False]]])
    pred = jnp.array([[[1.0, 0.0], [2.0, 123.0]]])  # valid 1, 0, 2: median 1, MAD 2/3 -> 0, -1.5, 1.5
    target = jnp.array([[[0.0, 2.0], [4.0, -7.0]]])  # valid 0, 2, 4: median 2, MAD 4/3 -> -1.5, 0, 1.5
    # R = [[1.5, -1.5], [0, -]]: L_ssi = 3 / 3; x-difference of row 0 = 3, y-difference of column 0 = 1.5,
    # the two differences touching the masked pixel do not count: L_gm = 4.5 / 3; coarser scales hold 1 pixel
    assert losses.ssi_loss(pred, target, mask) == pytest.approx(1.0, rel=1e-6)
    assert losses.gradient_matching_loss(pred, target, mask) == pytest.approx(1.5, rel=1e-6)
    assert losses.depth_loss(pred, target, mask)[0] == pytest.approx(4.0, rel=1e-6)


def test_batch_reduction_is_mean_of_per_image_losses_skipping_empty_images():
    full = jnp.ones((1, 2, 2), bool)
    pred_a, target_a = jnp.array([[[0.0, 1.0], [2.0, 3.0]]]), jnp.array([[[0.0, 0.0], [0.0, 4.0]]])
    pred_b, target_b = jnp.array([[[1.0, 0.0], [2.0, 9.0]]]), jnp.array([[[0.0, 2.0], [4.0, 9.0]]])
    mask_b = jnp.array([[[True, True], [True, False]]])
    # image a: normalised pred [[-1.5, -0.5], [0.5, 1.5]], target [[0, 0], [0, 4]]: L_ssi = 5 / 4, L_gm = 8 / 4
    assert losses.ssi_loss(pred_a, target_a, full) == pytest.approx(1.25, rel=1e-6)
    assert losses.gradient_matching_loss(pred_a, target_a, full) == pytest.approx(2.0, rel=1e-6)
    pred = jnp.concatenate([pred_a, pred_b, pred_a])
    target = jnp.concatenate([target_a, target_b, target_a])
    mask = jnp.concatenate([full, mask_b, jnp.zeros_like(full)])
    assert losses.ssi_loss(pred, target, mask) == pytest.approx((1.25 + 1.0) / 2, rel=1e-6)
    assert losses.gradient_matching_loss(pred, target, mask) == pytest.approx((2.0 + 1.5) / 2, rel=1e-6)


def test_all_invalid_batch_gives_zero_loss():
    pred, target, _ = _random_case(1)
    loss, _ = losses.depth_loss(pred, target, jnp.zeros(pred.shape, bool))
    assert loss == 0.0


def test_ssi_and_gradient_losses_invariant_to_per_image_scale_and_shift():
    pred, target, mask = _random_case(2)
    scale_p, shift_p = jnp.array([3.0, 0.02])[:, None, None], jnp.array([-5.0, 0.7])[:, None, None]
    scale_t, shift_t = jnp.array([0.1, 40.0])[:, None, None], jnp.array([2.0, -1.0])[:, None, None]
    base = losses.depth_loss(pred, target, mask)[1]
    moved = losses.depth_loss(pred * scale_p + shift_p, target * scale_t + shift_t, mask)[1]
    assert base["ssi"] > 0.1 and base["gm"] > 0.1
    np.testing.assert_allclose(moved["ssi"], base["ssi"], rtol=1e-5)
    np.testing.assert_allclose(moved["gm"], base["gm"], rtol=1e-5)


def test_gradient_loss_zero_for_affine_pair_and_positive_otherwise():
    _, target, mask = _random_case(3)
    affine = 2.5 * target + 0.3
    assert losses.gradient_matching_loss(affine, target, mask) == pytest.approx(0.0, abs=1e-5)
    assert losses.ssi_loss(affine, target, mask) == pytest.approx(0.0, abs=1e-5)
    bent = affine + 0.05 * jnp.sin(jnp.arange(target.shape[2]))[None, None, :]
    assert losses.gradient_matching_loss(bent, target, mask) > 1e-2


def test_gradient_loss_uses_four_stride_doubling_scales():
    pred, target, mask = _random_case(4, b=1, h=16, w=16, invalid=0.0)
    residual = np.asarray(losses.normalize_disparity(pred, mask) - losses.normalize_disparity(target, mask))[0]
    want = 0.0
    for k in range(4):
        r = residual[:: 2**k, :: 2**k]
        want += (np.abs(np.diff(r, axis=1)).sum() + np.abs(np.diff(r, axis=0)).sum()) / r.size
    np.testing.assert_allclose(losses.gradient_matching_loss(pred, target, mask), want, rtol=1e-5)


def test_masked_pixels_do_not_change_loss_or_receive_gradient():
    pred, target, mask = _random_case(5)
    rng = np.random.default_rng(6)
    junk = jnp.asarray(rng.normal(size=pred.shape).astype(np.float32) * 1e4)
    junk = junk.at[0, 0, :].set(jnp.nan).at[1, -1, :].set(jnp.inf)
    pred2 = jnp.where(mask, pred, junk)
    target2 = jnp.where(mask, target, -junk)
    for trim in (0.0, 0.1):
        a = losses.depth_loss(pred, target, mask, trim=trim)[0]
        b = losses.depth_loss(pred2, target2, mask, trim=trim)[0]
        assert b == pytest.approx(float(a), rel=1e-6)
        grad = jax.grad(lambda p: losses.depth_loss(p, target2, mask, trim=trim)[0])(pred2)
        assert np.isfinite(np.asarray(grad)).all()
        assert np.all(np.asarray(grad)[~np.asarray(mask)] == 0.0)


def test_trim_drops_exactly_the_largest_ten_percent_per_image():
    pred, target, mask = _random_case(7, b=2, h=10, w=10, invalid=0.0)
    mask = mask.at[1, :3, :].set(False)  # image 0: 100 valid -> 10 dropped; image 1: 70 valid -> 7 dropped
    residual = losses.normalize_disparity(pred, mask) - losses.normalize_disparity(target, mask)
    kept = np.asarray(losses.trim_mask(residual, mask, 0.1))
    r = np.abs(np.asarray(residual))
    for i, dropped in ((0, 10), (1, 7)):
        valid = np.asarray(mask[i])
        assert valid.sum() - kept[i].sum() == dropped
        assert r[i][valid & ~kept[i]].min() >= r[i][kept[i]].max()
    trimmed_ssi = np.mean([np.sort(r[i][np.asarray(mask[i])])[: n].mean() for i, n in ((0, 90), (1, 63))])
    np.testing.assert_allclose(losses.depth_loss(pred, target, mask, trim=0.1)[1]["ssi"], trimmed_ssi, rtol=1e-5)


def test_trim_count_is_exact_where_float_products_round_down():
    counts = jnp.array([0, 9, 10, 19, 20, 268320, 268324])
    np.testing.assert_array_equal(losses._trim_count(counts, 0.1), [0, 0, 1, 1, 2, 26832, 26832])
    np.testing.assert_array_equal(losses._trim_count(counts, 0.2), [0, 1, 2, 3, 4, 53664, 53664])


def test_trim_outside_unit_interval_is_rejected():
    pred, target, mask = _random_case(8)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        losses.depth_loss(pred, target, mask, trim=1.0)


def test_depth_loss_jits_and_gradient_descends():
    pred, target, mask = _random_case(9)
    loss_fn = jax.jit(lambda p: losses.depth_loss(p, target, mask, trim=0.1)[0])
    eager = losses.depth_loss(pred, target, mask, trim=0.1)[0]
    assert loss_fn(pred) == pytest.approx(float(eager), rel=1e-6)
    value, grad = jax.jit(jax.value_and_grad(loss_fn))(pred)
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0.0
    # the loss is piecewise linear in the prediction: a small step against the gradient must lower it
    assert loss_fn(pred - 1e-3 * grad) < value


def test_feature_alignment_hand_computed_with_margin():
    teacher = jnp.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    student = jnp.array([[[2.0, 0.0], [1.0, 0.0], [1.0, 1.0]]])
    # cosines 1 (above 0.85: left out), 0 and 1/sqrt(2)
    want = 1.0 - (0.0 + 2**-0.5) / 2
    assert losses.feature_alignment_loss(student, teacher) == pytest.approx(want, rel=1e-6)
    assert losses.feature_alignment_loss(student, teacher, margin=1.5) == pytest.approx(
        1.0 - (1.0 + 2**-0.5) / 3, rel=1e-6
    )
    assert losses.feature_alignment_loss(teacher, teacher) == 0.0


def test_feature_alignment_grad_reaches_student_only():
    rng = np.random.default_rng(10)
    student = jnp.asarray(rng.normal(size=(2, 3, 4, 8)).astype(np.float32)).at[0, 0, 0].set(0.0)
    teacher = jnp.asarray(rng.normal(size=(2, 3, 4, 8)).astype(np.float32))
    g_student, g_teacher = jax.jit(jax.grad(losses.feature_alignment_loss, argnums=(0, 1)))(student, teacher)
    assert np.isfinite(np.asarray(g_student)).all() and float(jnp.abs(g_student).max()) > 0.0
    assert float(jnp.abs(g_teacher).max()) == 0.0


def test_silog_matches_the_released_formula_pooled_over_the_batch():
    rng = np.random.default_rng(11)
    pred = rng.uniform(0.5, 20.0, (2, 6, 5)).astype(np.float32)
    target = rng.uniform(0.5, 20.0, (2, 6, 5)).astype(np.float32)
    mask = rng.uniform(size=(2, 6, 5)) > 0.3
    g = np.log(target[mask].astype(np.float64)) - np.log(pred[mask].astype(np.float64))
    want = np.sqrt(np.mean(g**2) - 0.5 * np.mean(g) ** 2)
    got = losses.silog_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    assert float(got) == pytest.approx(want, rel=8 * np.finfo(np.float32).eps * np.sqrt(mask.sum()))
    # scaling every prediction by s shifts g by -log s: with λ = 0.5 the loss is not scale-invariant
    scaled = losses.silog_loss(jnp.asarray(2.0 * pred), jnp.asarray(target), jnp.asarray(mask))
    want_scaled = np.sqrt(np.mean((g - np.log(2)) ** 2) - 0.5 * np.mean(g - np.log(2)) ** 2)
    assert float(scaled) == pytest.approx(want_scaled, rel=8 * np.finfo(np.float32).eps * np.sqrt(mask.sum()))
    grad = jax.grad(lambda p: losses.silog_loss(p, jnp.asarray(target), jnp.asarray(mask)))(jnp.asarray(pred))
    assert np.all(np.asarray(grad)[~mask] == 0.0) and np.isfinite(np.asarray(grad)).all()
