"""Specification of the evaluation metrics, alignments, crops, caps and DA-2K scoring (hand-computed cases)."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from launch.eval import alignment, metrics, protocols
from launch.eval.da2k import Da2k

PRED = np.array([[2.0, 1.0], [4.0, 3.0]])
GT = np.array([[1.0, 1.0], [2.0, 4.0]])
ALL = np.ones((2, 2), bool)


def test_depth_metrics_hand_computed():
    got = metrics.depth_metrics(PRED, GT, ALL)
    # ratios max(d̂/d, d/d̂): 2, 1, 2, 4/3
    assert got["abs_rel"] == pytest.approx((1 + 0 + 1 + 0.25) / 4)
    assert got["sq_rel"] == pytest.approx((1 + 0 + 2 + 0.25) / 4)
    assert got["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4 + 1) / 4))
    assert got["rmse_log"] == pytest.approx(math.sqrt((2 * math.log(2) ** 2 + math.log(4 / 3) ** 2) / 4))
    assert got["delta1"] == pytest.approx(0.25)
    assert got["delta2"] == pytest.approx(0.5)  # 4/3 < 1.5625
    assert got["delta3"] == pytest.approx(0.5)  # 2 > 1.953125
    assert set(got) == set(metrics.DEPTH_METRICS)


def test_depth_metrics_score_only_masked_pixels():
    mask = np.array([[True, True], [False, True]])
    assert metrics.abs_rel(PRED, GT, mask) == pytest.approx((1 + 0 + 0.25) / 3)
    junk = PRED.copy()
    junk[1, 0] = np.nan
    assert metrics.depth_metrics(junk, GT, mask) == metrics.depth_metrics(PRED, GT, mask)


def test_perfect_prediction_scores_zero_error_and_full_accuracy():
    got = metrics.depth_metrics(GT, GT, ALL)
    assert got["abs_rel"] == 0 and got["rmse"] == 0 and got["delta1"] == 1 and got["delta3"] == 1


def test_metrics_reject_empty_mask_and_shape_mismatch():
    with pytest.raises(ValueError, match="selects no pixel"):
        metrics.abs_rel(PRED, GT, np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="one shape"):
        metrics.rmse(PRED, GT[:1], ALL)


def test_normals_metrics_hand_computed():
    gt = np.tile(np.array([1.0, 0.0, 0.0]), (1, 4, 1))
    pred = np.array([[[1.0, 0, 0], [2.0, 0, 0], [1.0, 1.0, 0], [0, 0, 1.0]]])  # 0°, 0°, 45°, 90°
    got = metrics.normals_metrics(pred, gt, np.ones((1, 4), bool))
    assert got["mean"] == pytest.approx(33.75)
    assert got["median"] == pytest.approx(22.5)
    assert got["rmse"] == pytest.approx(math.sqrt((45**2 + 90**2) / 4))
    assert got["within_11_25"] == pytest.approx(50.0)
    assert got["within_22_5"] == pytest.approx(50.0)
    assert got["within_30"] == pytest.approx(50.0)
    masked = metrics.normals_metrics(pred, gt, np.array([[True, True, True, False]]))
    assert masked["mean"] == pytest.approx(15.0) and masked["within_30"] == pytest.approx(200 / 3)


def test_pair_correct_uses_the_prediction_orientation():
    disparity = np.array([[5.0, 1.0], [3.0, 3.0]])
    pairs = np.array([[[0, 0], [0, 1]], [[0, 1], [1, 0]], [[1, 0], [1, 1]]])  # right, wrong, tie (wrong)
    np.testing.assert_array_equal(metrics.pair_correct(disparity, pairs, True), [True, False, False])
    np.testing.assert_array_equal(metrics.pair_correct(1.0 / disparity, pairs, False), [True, False, False])
    with pytest.raises(ValueError, match="outside"):
        metrics.pair_correct(disparity, np.array([[[0, 0], [2, 0]]]), True)


def test_mean_metrics_averages_per_image():
    assert metrics.mean_metrics([{"a": 1.0, "b": 0.0}, {"a": 3.0, "b": 1.0}]) == {"a": 2.0, "b": 0.5}


def test_fit_scale_shift_matches_lstsq():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 5, (20, 30))
    target = 0.7 * pred - 2.0 + rng.normal(0, 0.3, pred.shape)
    mask = rng.uniform(size=pred.shape) > 0.3
    a = np.stack([pred[mask], np.ones(mask.sum())], axis=1)
    want = np.linalg.lstsq(a, target[mask], rcond=None)[0]
    np.testing.assert_allclose(alignment.fit_scale_shift(pred, target, mask), want, rtol=1e-10)


def test_fit_scale_shift_constant_prediction_gives_lstsq_aligned_map():
    pred = np.full((4, 4), 3.0)
    target = np.arange(16.0).reshape(4, 4)
    scale, shift = alignment.fit_scale_shift(pred, target, np.ones((4, 4), bool))
    a = np.stack([pred.ravel(), np.ones(16)], axis=1)
    lstsq = a @ np.linalg.lstsq(a, target.ravel(), rcond=None)[0]
    np.testing.assert_allclose(scale * pred.ravel() + shift, lstsq, rtol=1e-12)


def test_align_disparity_recovers_depth_from_affine_disparity():
    rng = np.random.default_rng(1)
    gt = rng.uniform(1.0, 9.0, (10, 12))
    pred = 3.0 / gt + 0.5  # affine in disparity
    depth, scale, shift = alignment.align_disparity(pred, gt, np.ones(gt.shape, bool), 1e-3, 10.0)
    np.testing.assert_allclose(depth, gt, rtol=1e-9)
    assert (scale, shift) == pytest.approx((1 / 3, -0.5 / 3))


def test_align_disparity_clips_aligned_disparity_to_the_depth_caps():
    gt = np.array([[1.0, 2.0, 4.0]])
    pred = np.array([[1.0, 0.5, 0.25]])
    mask = np.array([[True, True, False]])
    pred_far = pred.copy()
    pred_far[0, 2] = -5.0  # aligned disparity below 1/max_depth → depth capped at max_depth
    depth, _, _ = alignment.align_disparity(pred_far, gt, mask, 0.5, 10.0)
    np.testing.assert_allclose(depth[0, :2], [1.0, 2.0])
    assert depth[0, 2] == pytest.approx(10.0)
    pred_near = pred.copy()
    pred_near[0, 2] = 50.0  # aligned disparity above 1/min_depth → depth floored at min_depth
    assert alignment.align_disparity(pred_near, gt, mask, 0.5, 10.0)[0][0, 2] == pytest.approx(0.5)
    depth_inf, _, _ = alignment.align_disparity(pred_far, gt, mask, 0.5, math.inf)
    assert depth_inf[0, 2] == pytest.approx(1.0 / alignment.MIN_DISPARITY)


def test_align_depth_matches_lstsq_and_clips():
    rng = np.random.default_rng(2)
    gt = rng.uniform(1.0, 9.0, (8, 8))
    pred = rng.uniform(0.0, 1.0, (8, 8))
    mask = gt > 2.0
    depth, scale, shift = alignment.align_depth(pred, gt, mask, 1.0, 6.0)
    a = np.stack([pred[mask], np.ones(mask.sum())], axis=1)
    s, t = np.linalg.lstsq(a, gt[mask], rcond=None)[0]
    np.testing.assert_allclose(depth, np.clip(s * pred + t, 1.0, 6.0), rtol=1e-10)


def test_strided_subsample_matches_torch_nearest_downscale():
    import torch

    x = np.arange(37 * 53, dtype=np.float32).reshape(37, 53)
    f = min(20 / 37, 20 / 53)
    want = torch.nn.Upsample(scale_factor=f, mode="nearest")(torch.from_numpy(x)[None, None])[0, 0].numpy()
    np.testing.assert_array_equal(alignment.strided_subsample(x, 20), want)
    assert alignment.strided_subsample(x, 100) is x


def test_align_depth_with_max_resolution_fits_on_the_subsample():
    rng = np.random.default_rng(3)
    gt = rng.uniform(1.0, 9.0, (30, 40))
    pred = rng.uniform(0.0, 1.0, (30, 40))
    mask = np.ones(gt.shape, bool)
    _, scale, shift = alignment.align_depth(pred, gt, mask, 1e-3, 100.0, max_resolution=10)
    sub_p, sub_g = alignment.strided_subsample(pred, 10), alignment.strided_subsample(gt, 10)
    assert sub_p.shape == (7, 10)
    assert (scale, shift) == pytest.approx(alignment.fit_scale_shift(sub_p, sub_g, np.ones(sub_p.shape, bool)))


def test_eigen_crop_nyu_window():
    crop = protocols.evaluation_crop("eigen_nyu", (480, 640))
    assert crop.sum() == 426 * 560 and crop[45, 41] and crop[470, 600] and not crop[44, 41] and not crop[470, 601]
    with pytest.raises(ValueError, match="480x640"):
        protocols.evaluation_crop("eigen_nyu", (240, 320))


def test_kitti_garg_and_eigen_crops_on_a_full_frame():
    garg = protocols.evaluation_crop("garg", (375, 1242))
    rows, cols = np.nonzero(garg)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (153, 371, 44, 1197)
    eigen = protocols.evaluation_crop("eigen_kitti", (375, 1242))
    rows, cols = np.nonzero(eigen)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (124, 342, 44, 1197)


def test_kb_crop_takes_bottom_centre_window():
    frame = np.arange(375 * 1242).reshape(375, 1242)
    out = protocols.kb_crop(frame)
    assert out.shape == (352, 1216)
    assert out[0, 0] == frame[23, 13] and out[-1, -1] == frame[374, 1228]


def test_valid_mask_applies_caps_crop_and_dataset_mask():
    gt = np.array([[0.0, 0.5, 5.0, 20.0]])
    mask = np.array([[True, True, True, True]])
    spec = protocols.DepthSpec(1.0, 10.0)
    np.testing.assert_array_equal(protocols.valid_mask(gt, mask, spec), [[False, False, True, False]])
    np.testing.assert_array_equal(protocols.valid_mask(gt, ~mask, spec), [[False] * 4])


def test_score_depth_metric_model_is_clipped_not_aligned():
    gt = np.array([[2.0, 4.0], [6.0, 8.0]])
    spec = protocols.DepthSpec(1e-3, 10.0)
    perfect = protocols.score_depth(gt, gt, ALL, "metric", spec)
    assert perfect["abs_rel"] == 0 and perfect["delta1"] == 1 and perfect["valid_pixels"] == 4
    doubled = protocols.score_depth(2 * gt, gt, ALL, "metric", spec)  # 4, 8, 10 (capped), 10 (capped)
    assert doubled["abs_rel"] == pytest.approx((1 + 1 + 4 / 6 + 2 / 8) / 4)


def test_score_depth_aligns_disparity_and_depth_predictions():
    rng = np.random.default_rng(4)
    gt = rng.uniform(1.0, 9.0, (6, 7))
    spec = protocols.DepthSpec(1e-3, 10.0)
    assert protocols.score_depth(0.2 / gt + 7.0, gt, np.ones(gt.shape, bool), "disparity", spec)["abs_rel"] == (
        pytest.approx(0.0, abs=1e-12)
    )
    assert protocols.score_depth(3.0 * gt - 1.0, gt, np.ones(gt.shape, bool), "depth", spec)["abs_rel"] == (
        pytest.approx(0.0, abs=1e-12)
    )
    with pytest.raises(ValueError, match="differ in size"):
        protocols.score_depth(gt[:, :3], gt, np.ones(gt.shape, bool), "depth", spec)


def test_protocol_tables_follow_the_papers():
    assert protocols.depth_spec("dav2", "kitti") == protocols.DepthSpec(1e-3, 80.0, "garg")
    assert protocols.depth_spec("marigold", "kitti") == protocols.DepthSpec(1e-5, 80.0, "eigen_kitti")
    assert protocols.depth_spec("marigold", "eth3d").alignment_max_resolution == 1024
    assert protocols.depth_spec("marigold", "diode") == protocols.DepthSpec(0.6, 350.0)
    with pytest.raises(ValueError, match="unknown protocol"):
        protocols.depth_spec("midas", "nyu")


def test_da2k_reader_and_pair_accuracy_on_hand_made_json(tmp_path):
    (tmp_path / "images" / "indoor").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "images" / "indoor" / "a.jpg")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "images" / "indoor" / "b.png")
    annotations = {
        "images/indoor/a.jpg": [
            {"point1": [0, 0], "point2": [3, 4], "closer_point": "point1"},
            {"point1": [1, 1], "point2": [2, 2], "closer_point": "point2"},
        ],
        "images/indoor/b.png": [{"point1": [0, 4], "point2": [3, 0], "closer_point": "point1"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    reader = Da2k(str(tmp_path))
    assert len(reader) == 2
    sample = reader[0]
    assert sample.name == "images/indoor/a" and sample.rgb.shape == (4, 5, 3)
    np.testing.assert_array_equal(sample.pairs, [[[0, 0], [3, 4]], [[2, 2], [1, 1]]])
    disparity = np.arange(20.0).reshape(4, 5)[::-1]  # larger at the top: top rows are closer
    correct = np.concatenate([metrics.pair_correct(disparity, reader[i].pairs, True) for i in range(2)])
    np.testing.assert_array_equal(correct, [True, False, True])
    assert correct.mean() == pytest.approx(2 / 3)
