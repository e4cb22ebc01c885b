"""Parity of the Flax VAE, U-Net and CLIP text encoder with diffusers / transformers (random weights, float32)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.bench_marigold import SD2_UNET, SD_VAE
from marigold_jax.clip import CLIPTextModel
from marigold_jax.convert_diffusers import params_from_torch, params_to_torch
from marigold_jax.layers import PER_HEAD_TOKENS, dot_product_attention
from marigold_jax.unet import UNet2DConditionModel
from marigold_jax.unet_blocks import DownBlock2D
from marigold_jax.vae import AutoencoderKL

TINY_VAE = dict(
    block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
)
TINY_UNET = dict(
    in_channels=8,
    out_channels=4,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    attention_head_dim=(2, 4),
    cross_attention_dim=16,
    norm_num_groups=8,
    use_linear_projection=True,
)
# SD1-style projections, two transformer layers, three levels, other timestep embedding options, LCM's cond_proj
TINY_UNET_VARIANT = dict(
    in_channels=12,
    out_channels=8,
    block_out_channels=(16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=(1, 2, 1),
    transformer_layers_per_block=2,
    attention_head_dim=2,
    cross_attention_dim=24,
    norm_num_groups=4,
    use_linear_projection=False,
    flip_sin_to_cos=False,
    freq_shift=1,
    time_cond_proj_dim=8,
)


def randomise(module, seed=0):
    """Non-trivial norms and biases (they are 1 and 0 at init), so that a wrong mapping cannot hide."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                is_scale = name.endswith("weight")
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if is_scale else 0.0))
    return module.eval()


def state_dict(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def relative_error(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return np.abs(ours - ref).max() / np.abs(ref).max()


def nchw(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def torch_vae(config, seed=0):
    import torch
    from diffusers import AutoencoderKL as TorchVAE

    torch.manual_seed(seed)
    return randomise(TorchVAE(**config), seed)


def torch_unet(config, seed=0):
    import torch
    from diffusers import UNet2DConditionModel as TorchUNet

    torch.manual_seed(seed)
    return randomise(TorchUNet(**config), seed)


def vae_outputs(ref, x):
    """diffusers' posterior mean and decoding of `x` (NHWC numpy), as Marigold computes them (NHWC)."""
    import torch

    with torch.no_grad():
        moments = ref.quant_conv(ref.encoder(nchw(x)))
        mean = torch.chunk(moments, 2, dim=1)[0]
        return nhwc(mean), nhwc(ref.decoder(ref.post_quant_conv(mean)))


def unet_output(ref, sample, t, context):
    import torch

    with torch.no_grad():
        return nhwc(ref(nchw(sample), t, torch.from_numpy(np.asarray(context))).sample)


def check_vae(config, size, seed=0):
    ref = torch_vae(config, seed)
    x = np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    mean_ref, image_ref = vae_outputs(ref, x)
    model = AutoencoderKL.from_config(dict(ref.config))
    params = params_from_torch(model, state_dict(ref), "vae")
    with jax.default_matmul_precision("highest"):
        mean = jax.jit(lambda p, x: model.apply(p, x, method=AutoencoderKL.encode_mean))(params, x)
        image = jax.jit(lambda p, z: model.apply(p, z, method=AutoencoderKL.decode))(params, mean_ref)
    return relative_error(mean, mean_ref), relative_error(image, image_ref)


def check_unet(config, shape, t, seed=0, **options):
    """Relative error of our U-Net (built with `options`) against diffusers; `t` a scalar or one per sample."""
    import torch

    ref = torch_unet(config, seed)
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((2, *shape, config["in_channels"])).astype(np.float32)
    context = rng.standard_normal((2, 3, config["cross_attention_dim"])).astype(np.float32)
    expected = unet_output(ref, sample, torch.as_tensor(t) if np.ndim(t) else t, context)
    model = UNet2DConditionModel.from_config(dict(ref.config), **options)
    params = params_from_torch(model, state_dict(ref), "unet")
    with jax.default_matmul_precision("highest"):
        out = jax.jit(model.apply)(params, sample, jnp.asarray(t), context)
    return relative_error(out, expected)


@pytest.mark.parametrize(
    "q_len, kv_len, heads, head_dim",
    [
        (77, 77, 3, 16),  # one block of all heads
        (300, 2, 4, 8),  # cross-attention over a two-token prompt, padded last block
        (PER_HEAD_TOKENS + 1, PER_HEAD_TOKENS + 1, 2, 8),  # one head at a time, padded last block
        (2 * PER_HEAD_TOKENS, 5, 3, 4),
    ],
)
def test_heads_first_attention_is_within_float32_rounding_of_a_float64_softmax(q_len, kv_len, heads, head_dim):
    rng = np.random.default_rng(q_len)
    q = rng.standard_normal((2, q_len, heads, head_dim)).astype(np.float32)
    k, v = (3 * rng.standard_normal((2, kv_len, heads, head_dim)).astype(np.float32) for _ in range(2))
    logits = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k) / np.sqrt(head_dim)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    exact = np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), v)
    ours = relative_error(jax.jit(lambda *a: dot_product_attention(*a, implementation="heads_first"))(q, k, v), exact)
    # First-order float32 rounding: a logit s is a head_dim-term dot product (error ~ eps * sqrt(head_dim) * |s|),
    # which exp turns into the same relative error of its weight; the normalisation and the kv_len-term value sum
    # add ~ eps * sqrt(kv_len). A dropped block or a wrong normaliser errs by O(1), far above this bound.
    eps = np.finfo(np.float32).eps
    bound = 4 * eps * (np.sqrt(kv_len) + np.sqrt(head_dim) * np.abs(logits).max())
    assert ours <= bound, (ours, bound)


def test_vae_encode_mean_and_decode_match_diffusers():
    mean_err, image_err = check_vae(TINY_VAE, 24)
    assert mean_err <= 1e-4 and image_err <= 1e-4, (mean_err, image_err)


def test_vae_without_mid_attention_and_quant_convs_matches_diffusers():
    config = dict(TINY_VAE, mid_block_add_attention=False, use_quant_conv=True, use_post_quant_conv=True)
    mean_err, image_err = check_vae(config, 16, seed=1)
    assert mean_err <= 1e-4 and image_err <= 1e-4, (mean_err, image_err)


@pytest.mark.parametrize(
    "t, options",
    [
        (999, {}),
        (0, {"attention_impl": "heads_first"}),
        (np.array([417, 3]), {"remat": True}),  # one timestep per sample
    ],
)
def test_unet_matches_diffusers(t, options):
    assert check_unet(TINY_UNET, (8, 8), t, **options) <= 1e-4


def test_unet_at_latent_size_not_a_multiple_of_the_down_factor_matches_diffusers():
    # diffusers then upsamples to the skip connections' sizes (here 7x5 → 4x3 → 2x2 and back)
    assert check_unet(TINY_UNET_VARIANT, (7, 5), 250, seed=2) <= 1e-4


def test_unet_in_bfloat16_stays_close_to_diffusers():
    assert check_unet(TINY_UNET, (8, 8), 500, seed=4, dtype=jnp.bfloat16) <= 3e-2


def test_remat_keeps_values_and_gradients_of_a_block():
    block = DownBlock2D(16, groups=4, eps=1e-5, heads=2, num_layers=1)
    rng = np.random.default_rng(6)
    x, temb, context = (rng.standard_normal(s).astype(np.float32) for s in ((1, 6, 6, 8), (1, 32), (1, 3, 12)))
    params = jax.jit(block.init)(jax.random.key(0), x, temb, context)
    loss = lambda m: lambda p: sum(jnp.sum(jnp.sin(y)) for y in m.apply(p, x, temb, context)[1])
    g_base = jax.jit(jax.grad(loss(block)))(params)
    g_remat = jax.jit(jax.grad(loss(block.clone(remat=True))))(params)
    assert jax.tree.structure(g_base) == jax.tree.structure(g_remat)
    assert max(relative_error(a, b) for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_base))) <= 1e-5


def test_every_parameter_has_logical_axis_names():
    unet = UNet2DConditionModel.from_config(TINY_UNET_VARIANT)
    vae = AutoencoderKL.from_config(TINY_VAE)
    clip = CLIPTextModel.from_config(clip_config().to_dict())
    trees = [
        jax.eval_shape(lambda: unet.init(jax.random.key(0), jnp.zeros((1, 4, 4, 12)), 1, jnp.zeros((1, 2, 24)))),
        jax.eval_shape(lambda: vae.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))),
        jax.eval_shape(lambda: clip.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))),
    ]
    for tree in trees:
        leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert leaves and all(isinstance(b, nn.Partitioned) and len(b.names) == b.value.ndim for b in leaves)


def test_weights_round_trip_to_the_diffusers_state_dict():
    ref = torch_unet(TINY_UNET_VARIANT, 5)
    model = UNet2DConditionModel.from_config(dict(ref.config))
    back = params_to_torch(params_from_torch(model, state_dict(ref), "unet"))
    expected = state_dict(ref)
    assert back.keys() == expected.keys()
    assert all(np.array_equal(back[k], expected[k]) for k in expected)


def clip_config(**overrides):
    from transformers import CLIPTextConfig

    base = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                max_position_embeddings=12, hidden_act="gelu", bos_token_id=48, eos_token_id=49)
    return CLIPTextConfig(**{**base, **overrides})


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_clip_text_model_matches_transformers(act):
    import torch
    from transformers import CLIPTextModel as TorchCLIP

    torch.manual_seed(0)
    ref = randomise(TorchCLIP(clip_config(hidden_act=act)))
    ids = np.array([[48, 3, 17, 49, 49], [48, 49, 7, 7, 2]])
    with torch.no_grad():
        expected = ref(torch.from_numpy(ids)).last_hidden_state.numpy()
    model = CLIPTextModel.from_config(ref.config.to_dict())
    params = params_from_torch(model, state_dict(ref), "text_encoder")
    with jax.default_matmul_precision("highest"):
        out = model.apply(params, jnp.asarray(ids))
    assert relative_error(out, expected) <= 1e-4


@pytest.mark.slow
def test_full_size_sd2_unet_matches_diffusers_at_an_8x8_latent():
    assert check_unet(SD2_UNET, (8, 8), 999) <= 1e-4


@pytest.mark.slow
def test_full_size_sd_vae_matches_diffusers_at_32x32():
    mean_err, image_err = check_vae(SD_VAE, 32)
    assert mean_err <= 1e-4 and image_err <= 1e-4, (mean_err, image_err)


def test_published_sd2_configs_are_the_ones_the_parity_tests_build():
    """marigold_jax.architecture (what AOT planning compiles) holds the SD2 configs these tests check against
    diffusers (launch/bench_marigold.py), the U-Net with 4 latent channels in."""
    from marigold_jax import architecture

    def plain(config):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    assert plain({**SD2_UNET, "in_channels": 4}).items() <= architecture.SD2_UNET.items()
    assert plain(SD_VAE).items() <= architecture.SD2_VAE.items()
