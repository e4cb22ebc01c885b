"""Metric-depth fine-tuning of Depth Anything V2 as the released `metric_depth/` code does it, as a training task.

The model is the metric variant (head ends in sigmoid × `max_depth`: 20 m indoor / Hypersim, 80 m outdoor / Virtual
KITTI 2); the loss is SiLog with λ = 0.5 on the pixels whose ground truth lies in [`min_depth`, `max_depth`]; the
encoder starts from a relative checkpoint (`encoder_from`: only its `pretrained` weights, as the released
`--pretrained-from` loads them) with a fresh DPT head, or every weight comes from `init_from`. The optimizer
(AdamW, poly decay 0.9, decoder at 10× the encoder's rate) is the config's. One departure: the released code flips
the whole batch with probability 1/2; here each example is flipped on its own (same distribution per example).
"""

from dav2_jax.encoders import with_encoder
from dav2_jax.losses import silog_loss
from dav2_jax.teacher import TeacherTask


class MetricTask(TeacherTask):
    """Metric DAv2 fine-tuning: SiLog (λ 0.5) in metres on labelled samples {"image", "depth", "valid"}.

    Arguments of `TeacherTask` (encoder, crop, dtype, attention_impl, remat, init_from) plus max_depth (the
    head's range, metres), min_depth (metres; nearer ground truth is not scored), silog_lambda (0.5) and
    encoder_from ("" or a relative Depth Anything V2 checkpoint / training run whose encoder starts the model).
    """

    prediction_kind = "metric"

    def __init__(self, encoder="vitl", max_depth=20.0, min_depth=1e-3, silog_lambda=0.5, crop=518, dtype="float32",
                 attention_impl="auto", remat=False, encoder_from="", init_from=""):
        if encoder_from and init_from:
            raise ValueError(
                f"give encoder_from ({encoder_from!r}) or init_from ({init_from!r}), not both: the first sets the "
                "encoder only, the second every weight"
            )
        super().__init__(encoder, crop, dtype=dtype, attention_impl=attention_impl, remat=remat, init_from=init_from)
        self.model = self.model.clone(max_depth=float(max_depth))
        self.min_depth = min_depth
        self.silog_lambda = silog_lambda
        self.encoder_from = encoder_from

    def loss(self, params, frozen, batch, rng, step=None, targets=None):
        """batch: image [B, S, S, 3], depth [B, S, S] metres, valid [B, S, S] → (SiLog, {"silog"})."""
        pred = self.predict(params, frozen, batch)
        depth = batch["depth"]
        valid = batch["valid"] & (depth >= self.min_depth) & (depth <= self.model.max_depth)
        loss = silog_loss(pred, depth, valid, self.silog_lambda)
        return loss, {"silog": loss}

    def predict(self, params, frozen, batch, rng=None):
        """Depth in metres [B, H, W] for batch["image"] [B, H, W, 3] (ImageNet-normalised)."""
        return self.model.apply({"params": params}, batch["image"])

    def warm_start(self, params):
        """Fresh params → with `encoder_from`'s encoder (the head stays fresh) or all of `init_from`'s weights."""
        if self.encoder_from:
            return with_encoder(params, self.encoder_from, self.model.encoder)
        return super().warm_start(params)
