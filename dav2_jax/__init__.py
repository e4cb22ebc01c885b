"""Depth Anything V2 in JAX/Flax: the model, its pre/post-processing and every checkpoint format."""

from dav2_jax.checkpoints import load, save
from dav2_jax.model import DepthAnythingV2
from dav2_jax.preprocess import infer_batch, infer_image

__all__ = ["DepthAnythingV2", "load", "save", "infer_image", "infer_batch"]
