"""Tiny Marigold training runs as the demo makes them (an autoencoder run, then the `marigold` task on top), for the
tests of run export, loading, resume and sharding. Sizes: 16 x 16 scenes, a 2-level VAE (8 x 8 x 4 latents), a
one-level cross-attention U-Net."""

import runpy
import time
from pathlib import Path

from test_loop import override

from launch.data import sources

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16
TINY_UNET = dict(
    in_channels=4, out_channels=4, block_out_channels=[16], down_block_types=["CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D"], layers_per_block=1, attention_head_dim=2, cross_attention_dim=16,
    norm_num_groups=4, use_linear_projection=True,
)


class SlowScenes(sources.SyntheticScenes):
    """Generated scenes read `delay` seconds each, so that a run can be killed between two checkpoints."""

    def __init__(self, num_samples, height, width, seed, kind="mixed", delay=0.0):
        super().__init__(num_samples, height, width, seed, kind)
        self.delay = delay

    def __getitem__(self, i):
        time.sleep(self.delay)
        return super().__getitem__(i)


def _scenes(config, seed, num_samples):
    config.data.sources.synthetic.update(num_samples=num_samples, height=SIZE, width=SIZE, seed=seed)


def vae_config(total_steps=2):
    """configs/demo_vae.py at the tiny size, `total_steps` steps of 2 scenes."""
    c = runpy.run_path(str(ROOT / "configs" / "demo_vae.py"))["get_config"]()
    c.update(total_steps=total_steps, batch_size=2, log_every=1, checkpoint_every=total_steps)
    c.model.update(block_out_channels=(8, 16), groups=4, attention_impl="xla")
    _scenes(c, 7, 16)
    return c


def marigold_config(vae_run, modality="depth", total_steps=3, **overrides):
    """configs/demo_marigold.py at the tiny size on the autoencoder run `vae_run`; `overrides` are a.b paths."""
    c = runpy.run_path(str(ROOT / "configs" / "demo_marigold.py"))["get_config"]()
    c.update(total_steps=total_steps, batch_size=2, log_every=1, eval_every=0, checkpoint_every=total_steps)
    c.model.update(modality=modality, base=str(vae_run), attention_impl="xla")
    c.model.unet = dict(TINY_UNET)
    _scenes(c, 11, 16)
    return override(c, **overrides)
