"""The Depth Anything V2 teacher as a training task: DPT on DINOv2 trained on precise synthetic depth (paper §5).

The task object follows the contract of the shared training loop (`init`, `loss`, `prepare`, `param_groups`,
`logical_axis_rules`, `warm_start`; see ARCHITECTURE.md) and knows nothing about optimizers, meshes or files of
the run. Choices the paper leaves open, made here: the target is inverse depth on the valid pixels (invalid and
sky pixels are masked out, not set to zero disparity); the only augmentations are the random crop and a horizontal
flip with probability 1/2, drawn per example.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dav2_jax.losses import depth_loss
from dav2_jax.model import DepthAnythingV2
from dav2_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD, network_size
from dav2_jax.resize import cubic_matrix, resize_host
from dav2_jax.vit import PATCH


def _nearest_index(in_size, out_size):
    """Source index of each output pixel under OpenCV `INTER_NEAREST`: floor(dst · in / out)."""
    return np.minimum(np.floor(np.arange(out_size) * (in_size / out_size)).astype(np.int64), in_size - 1)


def random_crop(sample, crop, rng, target="depth"):
    """Resize so the short side is ≥ `crop` (official "lower_bound" rule), crop `crop` × `crop`, maybe flip.

    sample: {"image": uint8 [H, W, 3] RGB, "depth": float32 [H, W] metres, "valid": bool [H, W]}, or with
    target="disparity" {"image", "disparity": float32 [H, W] (a pseudo label; 0 = infinitely far is a valid value)}.
    The image is resized bicubically (OpenCV `INTER_CUBIC` semantics), the target map and mask by nearest
    neighbour, so no depth is invented across edges. rng: np.random.Generator for the crop offset and the flip;
    None gives the centre crop without flip (evaluation).
    Returns {"image": float32 [crop, crop, 3] ImageNet-normalised, target: float32 [crop, crop] (0 where
    invalid), "valid": bool [crop, crop]}.
    """
    if crop % PATCH:
        raise ValueError(f"the crop size must be a multiple of {PATCH}, got {crop}")
    image, depth = sample["image"], sample[target]
    valid = sample["valid"] if target == "depth" else np.isfinite(depth)
    h, w = image.shape[:2]
    nh, nw = network_size(h, w, crop)
    x = image / 255.0
    if (nh, nw) != (h, w):
        x = resize_host(x, cubic_matrix(h, nh), cubic_matrix(w, nw))
        rows, cols = _nearest_index(h, nh), _nearest_index(w, nw)
        depth, valid = depth[rows][:, cols], valid[rows][:, cols]
    if rng is None:
        top, left, flip = (nh - crop) // 2, (nw - crop) // 2, False
    else:
        top, left, flip = rng.integers(0, nh - crop + 1), rng.integers(0, nw - crop + 1), bool(rng.random() < 0.5)
    window = (slice(top, top + crop), slice(left, left + crop))
    x, depth, valid = x[window], depth[window], valid[window]
    if flip:
        x, depth, valid = x[:, ::-1], depth[:, ::-1], valid[:, ::-1]
    valid = valid & np.isfinite(depth) & ((depth > 0) if target == "depth" else (depth >= 0))
    return {
        "image": ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32),
        target: np.where(valid, depth, 0.0).astype(np.float32),
        "valid": np.ascontiguousarray(valid),
    }


class TeacherTask:
    """DAv2 relative-depth training on labelled (synthetic) images: L = L_ssi + gm_weight · L_gm on disparity.

    encoder: "vits" | "vitb" | "vitl" | "vitg"; crop: training crop side (518 in the paper); gm_weight: 2 (paper);
    trim: share of largest per-pixel losses ignored (0 for precise labels); dtype: compute dtype name
    ("float32" | "bfloat16"); attention_impl, remat: see `DepthAnythingV2`. Warm start (at most one):
    dinov2_init: "" or a DINOv2 checkpoint (official `.pth`, transformers folder or safetensors; see
    `dav2_jax.convert_dinov2`) for the encoder, the DPT head staying random (the paper's initialisation);
    init_from: "" or a Depth Anything V2 checkpoint (any format `dav2_jax.load` reads) for all weights.
    """

    def __init__(self, encoder="vitg", crop=518, gm_weight=2.0, trim=0.0, dtype="float32", attention_impl="auto",
                 remat=False, dinov2_init="", init_from=""):
        if dinov2_init and init_from:
            raise ValueError(
                f"give dinov2_init ({dinov2_init!r}) or init_from ({init_from!r}), not both: the first sets the "
                "encoder only, the second every weight"
            )
        self.model = DepthAnythingV2(encoder, None, jnp.dtype(dtype), attention_impl, remat)
        self.crop = crop
        self.gm_weight = gm_weight
        self.trim = trim
        self.dinov2_init = dinov2_init
        self.init_from = init_from

    def init(self, rng, example_batch):
        """Random parameters (boxed with logical axis names) for images like `example_batch["image"]`; no frozen."""
        return self.model.init(rng, jnp.asarray(example_batch["image"]))["params"], {}

    prediction_kind = "disparity"  # held-out scoring: least squares in disparity space

    def predict(self, params, frozen, batch, rng=None):
        """Relative disparity [B, H, W] for batch["image"] [B, H, W, 3] (ImageNet-normalised); rng unused."""
        return self.model.apply({"params": params}, batch["image"])

    def input_images(self, batch):
        """The network inputs batch["image"] [B, H, W, 3] (ImageNet-normalised) as RGB uint8, for sample pictures."""
        rgb = np.asarray(batch["image"], np.float64) * IMAGENET_STD + IMAGENET_MEAN
        return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)

    def loss(self, params, frozen, batch, rng, step=None, targets=None):
        """batch: image [B, S, S, 3], depth [B, S, S] metres, valid [B, S, S] → (loss, {"ssi", "gm"}).

        rng, step, targets: the loop's loss arguments; the teacher's loss uses none of them.
        """
        pred = self.predict(params, frozen, batch)
        valid = batch["valid"]
        target = jnp.where(valid, 1.0 / jnp.where(valid, batch["depth"], 1.0), 0.0)
        return depth_loss(pred, target, valid, gm_weight=self.gm_weight, trim=self.trim)

    def prepare(self, sample, rng):
        """Host-side: one source sample → one training example (see `random_crop`); rng None → centre crop."""
        return random_crop(sample, self.crop, rng)

    def param_groups(self, params):
        """"encoder" for the DINOv2 backbone (`pretrained/...`), "decoder" for the DPT head (paper: 10x the lr)."""
        return {
            name: jax.tree.map(lambda _, label=("encoder" if name == "pretrained" else "decoder"): label, sub)
            for name, sub in params.items()
        }

    def logical_axis_rules(self, sharding):
        """No names beyond the standard ones: `qkv`, `glu`, `head_dim` stay replicated under every rule set."""
        return ()

    def warm_start(self, params):
        """Freshly initialised params → with `dinov2_init`'s encoder or all of `init_from`'s weights."""
        if self.dinov2_init:
            from dav2_jax.convert_dinov2 import init_encoder

            return init_encoder(params, self.dinov2_init)
        if not self.init_from:
            return params
        from dav2_jax.checkpoints import load

        model, loaded = load(self.init_from)
        if model.encoder != self.model.encoder:
            raise ValueError(
                f"{self.init_from!r} holds a {model.encoder} model but the task trains {self.model.encoder}; "
                "set --config.model.encoder to match or choose another init_from"
            )
        return dict(loaded.get("params", loaded))
