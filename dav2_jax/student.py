"""The Depth Anything V2 students as a training task: pseudo-labelled real images only (paper §5, "Details").

Loss per batch: the teacher's L_ssi + gm_weight · L_gm on the teacher's pseudo disparity, leaving out per image the
`trim` (10 %) valid pixels with the largest loss (label noise), plus `feature_weight` × the Depth Anything V1
feature alignment to a frozen DINOv2 encoder (1 − cosine per patch token of the last encoder layer, tokens above
the margin 0.85 left out). The student's encoder starts from DINOv2 (`dinov2_init`, as the teacher's), the DPT head
from random.

`feature_weight` is not in either paper; we use 1.0. Both terms are dimensionless and of order 0.1–1 (the depth
loss works on median/MAD-normalised maps, the alignment term is 1 − cosine on the tokens still below 0.85), so a
1 : 1 sum lets the alignment act as the regulariser V1 describes without outweighing the labels; the margin already
stops it from pinning the student to DINOv2 once a token is close.

The frozen encoder (`init`'s `frozen` = {"dinov2": ViT params}) is read by `load_frozen` straight from its file into
the shardings the loop asks for (one host copy in NumPy, never a random init first); by default it is the same
DINOv2 checkpoint as `dinov2_init`, or `feature_teacher` (a DINOv2 checkpoint, or a Depth Anything V2 checkpoint or
training run whose encoder then serves as the frozen feature model, as the CPU demo does).
"""

import jax
import jax.numpy as jnp

from dav2_jax.encoders import encoder_weights, place, with_encoder
from dav2_jax.losses import depth_loss, feature_alignment_loss
from dav2_jax.teacher import TeacherTask, random_crop
from dav2_jax.vit import ENCODERS, DinoVisionTransformer


class StudentTask(TeacherTask):
    """DAv2 student: depth loss on pseudo disparity (trimmed) + feature alignment to frozen DINOv2.

    Arguments of `TeacherTask` (encoder, crop, gm_weight, trim (0.1 here), dtype, attention_impl, remat,
    dinov2_init, init_from), plus encoder_from (the encoder from a Depth Anything V2 checkpoint or run instead of
    DINOv2), feature_weight (0 turns the alignment and the frozen encoder off), feature_margin (V1: 0.85) and
    feature_teacher ("" = `dinov2_init`). Training samples are
    {"image", "disparity"} (reader `pseudo_labeled`); held-out samples carry metric "depth" and "valid".
    """

    prediction_kind = "disparity"

    def __init__(self, encoder="vitg", crop=518, gm_weight=2.0, trim=0.1, dtype="float32", attention_impl="auto",
                 remat=False, dinov2_init="", init_from="", encoder_from="", feature_weight=1.0, feature_margin=0.85,
                 feature_teacher=""):
        if sum(map(bool, (dinov2_init, init_from, encoder_from))) > 1:
            raise ValueError("give at most one of dinov2_init, init_from and encoder_from (got "
                             f"{dinov2_init!r}, {init_from!r}, {encoder_from!r})")
        super().__init__(encoder, crop, gm_weight, trim, dtype, attention_impl, remat, dinov2_init, init_from)
        self.encoder_from = encoder_from
        self.feature_weight = feature_weight
        self.feature_margin = feature_margin
        self.feature_teacher = feature_teacher or dinov2_init
        if feature_weight and not self.feature_teacher:
            raise ValueError(
                "the feature alignment needs a frozen encoder: set model.dinov2_init (a DINOv2 checkpoint) or "
                "model.feature_teacher, or turn the alignment off with model.feature_weight=0"
            )
        self.dinov2 = DinoVisionTransformer(encoder, jnp.dtype(dtype), attention_impl, False)
        self.last_block = ENCODERS[encoder].depth - 1  # DINOv2's output: the last block, through the final norm

    def init(self, rng, example_batch):
        """Random trainable params; frozen {"dinov2": ...} (shapes only matter: `load_frozen` supplies the values)."""
        params, _ = super().init(rng, example_batch)
        if not self.feature_weight:
            return params, {}
        images = jnp.asarray(example_batch["image"])
        return params, {"dinov2": self.dinov2.init(jax.random.fold_in(rng, 1), images)["params"]}

    def load_frozen(self, abstract_frozen):
        """The frozen DINOv2 encoder read from `feature_teacher` into `abstract_frozen`'s shapes and shardings."""
        if not abstract_frozen:
            return {}
        found, weights = encoder_weights(self.feature_teacher)
        if found != self.model.encoder:
            raise ValueError(f"feature_teacher {self.feature_teacher!r} holds a {found} encoder; the student is "
                             f"{self.model.encoder}: use the DINOv2 checkpoint of the student's size")
        return {"dinov2": place(abstract_frozen["dinov2"], weights, self.feature_teacher)}

    def warm_start(self, params):
        """Fresh params → encoder from `encoder_from`, else as the teacher (`dinov2_init` or `init_from`)."""
        if self.encoder_from:
            return with_encoder(params, self.encoder_from, self.model.encoder)
        return super().warm_start(params)

    def loss(self, params, frozen, batch, rng, step=None, targets=None):
        """batch: image [B, S, S, 3], disparity [B, S, S] (pseudo labels), valid [B, S, S] → (loss, metrics).

        metrics: "ssi", "gm" (on the kept pixels), "feature" (alignment loss, when on).
        """
        pred, features = self.model.apply({"params": params}, batch["image"],
                                          method="depth_and_features")
        loss, metrics = depth_loss(pred, batch["disparity"], batch["valid"], gm_weight=self.gm_weight,
                                   trim=self.trim)
        if self.feature_weight:
            reference = self.dinov2.apply({"params": frozen["dinov2"]}, batch["image"], taps=(self.last_block,))
            feature = feature_alignment_loss(features[-1], reference[0], self.feature_margin)
            loss = loss + self.feature_weight * feature
            metrics = {**metrics, "feature": feature}
        return loss, metrics

    def prepare(self, sample, rng):
        """Host-side: a pseudo-labelled sample → {"image", "disparity", "valid"} (random crop, flip); a held-out
        sample with metric depth → {"image", "depth", "valid"} (centre crop)."""
        return random_crop(sample, self.crop, rng, "disparity" if "disparity" in sample else "depth")

