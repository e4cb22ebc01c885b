"""Evaluation: benchmark readers, metrics, alignment protocols and the evaluation loop behind launch/evaluate.py.

Stable entry points for other code (the training loop's periodic evaluation uses the same functions):
`metrics.depth_metrics`, `metrics.normals_metrics`, `metrics.pair_correct`, `metrics.mean_metrics`,
`alignment.fit_scale_shift`, `alignment.align_disparity`, `alignment.align_depth`, `protocols.score_depth`,
`protocols.DepthSpec`, `datasets.open_dataset`.
"""
