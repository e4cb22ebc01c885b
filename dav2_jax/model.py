"""`DepthAnythingV2`: DINOv2 encoder + DPT head, relative (ReLU) or metric (Sigmoid × max_depth)."""

import flax.linen as nn
import jax.numpy as jnp

from dav2_jax.dpt import DPTHead
from dav2_jax.vit import ENCODERS, DinoVisionTransformer

HEADS = {  # (DPT features, out_channels) of the official configurations
    "vits": (64, (48, 96, 192, 384)),
    "vitb": (128, (96, 192, 384, 768)),
    "vitl": (256, (256, 512, 1024, 1024)),
    "vitg": (384, (1536, 1536, 1536, 1536)),
}


class DepthAnythingV2(nn.Module):
    """Depth Anything V2.

    encoder: "vits" | "vitb" | "vitl" | "vitg". max_depth: None for the relative model (output = affine-invariant
    inverse depth, ReLU), or the metric range in metres (output = depth = sigmoid · max_depth; 20 indoor, 80
    outdoor). dtype: compute dtype (parameters stay float32). attention_impl: "auto" (default: "heads_first" on
    the CPU backend, where it is faster, "xla" elsewhere), "xla" or "heads_first". remat: what each transformer
    block keeps for the backward pass: False / "none" (everything), "dots" (its matrix products; the rest is
    recomputed) or True / "full" (only its input).

    Call with images [B, H, W, 3] float32, ImageNet-normalised, H and W multiples of 14; returns [B, H, W] float32.
    """

    encoder: str = "vits"
    max_depth: float | None = None
    dtype: jnp.dtype = jnp.float32
    attention_impl: str = "auto"
    remat: bool | str = False

    def setup(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {self.encoder!r}")
        self.pretrained = DinoVisionTransformer(self.encoder, self.dtype, self.attention_impl, self.remat)
        features, out_channels = HEADS[self.encoder]
        self.depth_head = DPTHead(features, out_channels, self.dtype)

    def encoder_features(self, images, taps=None):
        """The tapped, normed encoder maps: a list of [B, H/14, W/14, C] (default taps: the DPT's four)."""
        return self.pretrained(images, taps)

    def depth_and_features(self, images):
        """(depth [B, H, W] float32, the DPT's tapped encoder maps) from one pass; the last map is DINOv2's output."""
        features = self.pretrained(images)
        return self._activate(self.depth_head(features).astype(jnp.float32)), features

    def __call__(self, images):
        return self._activate(self.depth_head(self.pretrained(images)).astype(jnp.float32))

    def _activate(self, out):
        if self.max_depth is None:
            return nn.relu(out)  # output_conv2 ends in ReLU; the second one in the official forward() is idempotent
        return nn.sigmoid(out) * self.max_depth
