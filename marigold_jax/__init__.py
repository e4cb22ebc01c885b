"""Marigold (depth, surface normals, intrinsic image decomposition) in JAX/Flax, equal to diffusers.

    pipeline = marigold_jax.load("marigold-depth-v1-1")      # a diffusers folder; no torch needed
    pipeline = marigold_jax.load("runs/demo_marigold")         # or a training run directory (newest step)
    out = pipeline.predict_depth(rgb_uint8)                    # out.prediction [1, H, W, 1] in [0, 1]
    marigold_jax.save(pipeline, "exported")                    # loads back in diffusers
    big = marigold_jax.predict_tiled(pipeline, rgb_uint8, 2048)  # long side 2048 in tiles (MultiDiffusion)
"""

from marigold_jax.clip import CLIPTextModel
from marigold_jax.convert_diffusers import MarigoldFolder, load_folder, save_folder
from marigold_jax.pipeline import MarigoldOutput, MarigoldPipeline, detect_modality, load, save
from marigold_jax.tiling import predict_tiled
from marigold_jax.unet import UNet2DConditionModel
from marigold_jax.vae import AutoencoderKL

__all__ = [
    "AutoencoderKL",
    "CLIPTextModel",
    "MarigoldFolder",
    "MarigoldOutput",
    "MarigoldPipeline",
    "UNet2DConditionModel",
    "detect_modality",
    "load",
    "load_folder",
    "predict_tiled",
    "save",
    "save_folder",
]
