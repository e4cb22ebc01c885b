"""The `marigold` task: one training step's loss and U-Net gradient against diffusers, frozen parts, prediction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from marigold_jax import objective, training
from marigold_jax.convert_diffusers import torch_name, to_torch_layout
from test_marigold_surgery import sd2_folder  # noqa: F401  (fixture)

EPS = np.finfo(np.float32).eps


def _frozen(task, example):
    """The task's frozen tree through `load_frozen`, on one device."""
    from jax.sharding import NamedSharding, PartitionSpec

    import flax.linen as nn

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    abstract = nn.unbox(jax.eval_shape(task.init, jax.random.key(0), example)[1])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, PartitionSpec())), abstract
    )
    return task.load_frozen(abstract)


def _ready(path, modality, batch):
    """(task, its warm-started U-Net params, its frozen tree) for a base folder."""
    import flax.linen as nn

    task = training.MarigoldTask(modality=modality, base=path)
    params = task.warm_start(nn.unbox(jax.jit(task.init)(jax.random.key(0), batch)[0]))
    return task, params, _frozen(task, batch)


def _batch(seed, size=16):
    rng = np.random.default_rng(seed)
    valid = rng.random((2, size, size)) > 0.03
    return dict(
        image=rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32),
        target=np.repeat(rng.uniform(-1, 1, (2, size, size, 1)), 3, -1).astype(np.float32),
        valid=valid,
    )


@pytest.mark.slow
def test_one_step_loss_and_unet_gradient_equal_diffusers(sd2_folder):  # noqa: F811
    import torch
    from diffusers import DDPMScheduler

    pipe, path = sd2_folder
    batch = _batch(0)
    task, params, frozen = _ready(path, "depth", batch)
    rng = jax.random.key(3)
    with jax.default_matmul_precision("highest"):
        (loss, _), grads = jax.jit(jax.value_and_grad(task.loss, has_aux=True))(params, frozen, batch, rng)
        # the draws inside the loss, for the PyTorch side
        k_t, k_noise = jax.random.split(rng)
        t = objective.sample_timesteps(k_t, 2)
        z_tgt = jax.jit(task.encode)(frozen, jnp.asarray(batch["target"]))
        noise = jax.jit(objective.training_noise, static_argnums=3)(k_noise, z_tgt, t, 0.9)

    unet = pipe.unet
    with torch.no_grad():  # the released surgery
        w = unet.conv_in.weight
        conv = torch.nn.Conv2d(8, w.shape[0], 3, padding=1)
        conv.weight.copy_(w.repeat(1, 2, 1, 1) / 2)
        conv.bias.copy_(unet.conv_in.bias)
        unet.conv_in = conv
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True,
                                          timestep_spacing="trailing")
    nchw = lambda x: torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)
    with torch.no_grad():
        z_rgb = pipe.vae.encode(nchw(batch["image"])).latent_dist.mean * 0.18215
        z = pipe.vae.encode(nchw(batch["target"])).latent_dist.mean * 0.18215
        ids = pipe.tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids
        text = pipe.text_encoder(ids)[0].repeat(2, 1, 1)
    eps, tt = nchw(noise), torch.from_numpy(np.asarray(t)).long()
    unet.zero_grad()
    pred = unet(torch.cat([z_rgb, scheduler.add_noise(z, eps, tt)], 1), tt, text).sample
    target = scheduler.get_velocity(z, eps, tt)
    invalid = torch.from_numpy(~batch["valid"]).float()[:, None]
    mask = ~torch.nn.functional.max_pool2d(invalid, task.factor, task.factor).bool()
    mask = mask.repeat(1, 4, 1, 1)
    ref = torch.nn.functional.mse_loss(pred[mask], target[mask])
    ref.backward()
    assert abs(float(loss) - ref.item()) <= 1e-5 * ref.item()
    ref_grads = {k: p.grad.numpy() for k, p in unet.named_parameters()}
    flat = traverse_util.flatten_dict(grads)
    assert len(flat) == len(ref_grads)
    scale = max(np.abs(g).max() for g in ref_grads.values())
    for path_, g in flat.items():
        ours = to_torch_layout(path_[-1], np.asarray(g))
        np.testing.assert_allclose(ours, ref_grads[torch_name(path_)], atol=1e-4 * scale, rtol=0,
                                   err_msg=torch_name(path_))


@pytest.mark.slow
def test_predict_is_one_trailing_ddim_step_decoded(sd2_folder):  # noqa: F811
    _, path = sd2_folder
    batch = _batch(1)
    task, params, frozen = _ready(path, "depth", batch)
    depth = np.asarray(jax.jit(task.predict)(params, frozen, batch, jax.random.key(0)))
    assert depth.shape == (2, 16, 16) and depth.min() >= 0 and depth.max() <= 1
    assert task.prediction_kind == "depth"
    normals = training.MarigoldTask(modality="normals", base=path)
    n = np.asarray(jax.jit(normals.predict)(params, frozen, batch, jax.random.key(0)))
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)


def test_prepare_encodes_targets_and_keeps_ground_truth_for_evaluation(sd2_folder):  # noqa: F811
    _, path = sd2_folder
    rng = np.random.default_rng(0)
    sample = dict(image=rng.integers(0, 256, (16, 24, 3), dtype=np.uint8),
                  depth=rng.uniform(1, 5, (16, 24)).astype(np.float32), valid=np.ones((16, 24), bool))
    task = training.MarigoldTask(modality="depth", base=path)
    held_out = task.prepare(sample, None)
    assert held_out["target"].shape == (16, 24, 3) and held_out["target"].min() == -1 and held_out["target"].max() == 1
    np.testing.assert_array_equal(held_out["depth"], sample["depth"])
    np.testing.assert_array_equal(task.input_images({"image": held_out["image"][None]})[0], sample["image"])
    train = task.prepare(sample, np.random.default_rng(0))
    assert "depth" not in train and train["image"].dtype == np.float32
    with pytest.raises(ValueError, match="multiples of 2"):
        task.encode(None, np.zeros((1, 15, 24, 3), np.float32))


@pytest.mark.slow
def test_demo_autoencoder_is_an_sd_vae_of_its_config_and_prepares_every_target():
    import flax.linen as nn

    from marigold_jax.vae import AutoencoderKL
    from marigold_jax.vae_training import AutoencoderTask

    task = AutoencoderTask(block_out_channels=(8, 16), groups=4)
    rng = np.random.default_rng(0)
    sample = dict(image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), depth=rng.uniform(1, 5, (8, 8)),
                  valid=np.ones((8, 8), bool), normals=np.tile([0.0, 0.0, 1.0], (8, 8, 1)))
    example = {k: v[None] for k, v in task.prepare(sample, np.random.default_rng(1)).items()}
    assert sorted(example) == ["depth", "image", "normals"]
    assert all(v.shape == (1, 8, 8, 3) and v.min() >= -1 and v.max() <= 1 for v in example.values())
    trained = jax.eval_shape(task.init, jax.random.key(0), example)[0]
    vae = AutoencoderKL.from_config(task.config())
    plain = jax.eval_shape(vae.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    shapes = lambda t: jax.tree.map(lambda a: a.shape, nn.unbox(t))
    assert shapes(trained) == shapes(plain)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), example)[0])
    loss, parts = jax.jit(task.loss)(params, {}, example, jax.random.key(1))
    assert abs(float(loss) - float(parts["mse"] + task.kl_weight * parts["kl"])) <= 4 * EPS * float(loss)
