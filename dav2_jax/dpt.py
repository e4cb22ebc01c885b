"""The DPT decoder of Depth Anything V2 (official `DPTHead`), NHWC.

Submodule names mirror the official module tree (`projects.i`, `resize_layers.i`, `scratch.layerK_rn`,
`scratch.refinenetK.resConfUnitR.convC`, `scratch.output_conv1`, `scratch.output_conv2.{0,2}`).
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def _init(init, *names):
    return nn.with_logical_partitioning(init, names)


def conv(features, kernel, name, dtype, stride=1, padding=None, bias=True, transpose=False):
    """A Conv (or ConvTranspose with kernel == stride) with logical axis names; `padding` defaults to k // 2."""
    pad = kernel // 2 if padding is None else padding
    kw = dict(
        kernel_init=_init(nn.initializers.lecun_normal(), None, None, "conv_in", "conv_out"),
        bias_init=_init(nn.initializers.zeros, "conv_out"),
        use_bias=bias,
        dtype=dtype,
        name=name,
    )
    if transpose:
        # transpose_kernel stores (kh, kw, out, in): PyTorch's ConvTranspose2d weight transposed, no spatial flip.
        kw["kernel_init"] = _init(nn.initializers.lecun_normal(), None, None, "conv_out", "conv_in")
        return nn.ConvTranspose(features, (kernel, kernel), strides=(stride, stride), padding="VALID",
                                transpose_kernel=True, **kw)
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)), **kw)


def _lerp_axis(x, axis: int, out_size: int, xp=jnp):
    """Linear interpolation with align_corners=True along one axis: two gathers and a blend (no dense matmul).

    xp: `jax.numpy` (traceable) or `numpy` (host arrays, no compilation per size).
    """
    in_size = x.shape[axis]
    src = np.arange(out_size) * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros(out_size)
    lo = np.clip(np.floor(src).astype(np.int64), 0, in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    shape = [1] * x.ndim
    shape[axis] = out_size
    frac = xp.asarray((src - lo).reshape(shape), x.dtype)
    return xp.take(x, lo, axis=axis) * (1 - frac) + xp.take(x, hi, axis=axis) * frac


def resize_align_corners(x, height: int, width: int, xp=jnp):
    """Bilinear resize with `align_corners=True` semantics. x: [B, h, w, C] → [B, height, width, C].

    xp: `jax.numpy` (default) or `numpy` for host arrays of many different sizes.
    """
    if x.shape[1] != height:
        x = _lerp_axis(x, 1, height, xp)
    if x.shape[2] != width:
        x = _lerp_axis(x, 2, width, xp)
    return x


class ResidualConvUnit(nn.Module):
    """conv2(relu(conv1(relu(x)))) + x, residual on the un-activated input (the original ReLU is not in-place)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        f = x.shape[-1]
        h = conv(f, 3, "conv1", self.dtype)(nn.relu(x))
        h = conv(f, 3, "conv2", self.dtype)(nn.relu(h))
        return h + x


class FeatureFusionBlock(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, skip=None, size=None):
        """x, skip: [B, h, w, F]; size: (H, W) output size, default 2h × 2w. Returns [B, H, W, F]."""
        rcu1 = ResidualConvUnit(self.dtype, name="resConfUnit1")
        if skip is not None:
            x = x + rcu1(skip)
        elif self.is_initializing():
            # refinenet4 never uses resConfUnit1, but every official checkpoint holds its weights.
            rcu1(x)
        x = ResidualConvUnit(self.dtype, name="resConfUnit2")(x)
        size = (2 * x.shape[1], 2 * x.shape[2]) if size is None else size
        x = resize_align_corners(x, *size)
        return conv(x.shape[-1], 1, "out_conv", self.dtype)(x)


class DPTHead(nn.Module):
    """Reassemble four token maps, fuse coarse-to-fine, regress one channel.

    Returns the head's pre-activation-free output [B, 14·gh, 14·gw] after `output_conv2` minus its last
    activation; the caller applies ReLU (relative) or Sigmoid × max_depth (metric).
    """

    features: int
    out_channels: tuple[int, int, int, int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, maps):
        """maps: four [B, gh, gw, C] encoder maps. Returns [B, 14·gh, 14·gw]."""
        _, gh, gw, _ = maps[0].shape
        layers = []
        for i, (x, ch) in enumerate(zip(maps, self.out_channels)):
            x = conv(ch, 1, f"projects_{i}", self.dtype)(x)
            if i == 0:
                x = conv(ch, 4, "resize_layers_0", self.dtype, stride=4, transpose=True)(x)
            elif i == 1:
                x = conv(ch, 2, "resize_layers_1", self.dtype, stride=2, transpose=True)(x)
            elif i == 3:
                x = conv(ch, 3, "resize_layers_3", self.dtype, stride=2, padding=1)(x)
            layers.append(conv(self.features, 3, f"scratch_layer{i + 1}_rn", self.dtype, bias=False)(x))
        l1, l2, l3, l4 = layers
        p = FeatureFusionBlock(self.dtype, name="scratch_refinenet4")(l4, size=l3.shape[1:3])
        p = FeatureFusionBlock(self.dtype, name="scratch_refinenet3")(p, l3, size=l2.shape[1:3])
        p = FeatureFusionBlock(self.dtype, name="scratch_refinenet2")(p, l2, size=l1.shape[1:3])
        p = FeatureFusionBlock(self.dtype, name="scratch_refinenet1")(p, l1)
        out = conv(self.features // 2, 3, "scratch_output_conv1", self.dtype)(p)
        out = resize_align_corners(out, 14 * gh, 14 * gw)
        out = nn.relu(conv(32, 3, "scratch_output_conv2_0", self.dtype)(out))
        return conv(1, 1, "scratch_output_conv2_2", self.dtype)(out)[..., 0]
