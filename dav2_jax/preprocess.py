"""Pre- and post-processing of the official `DepthAnythingV2.infer_image`, taking RGB uint8 instead of BGR."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dav2_jax.dpt import resize_align_corners
from dav2_jax.resize import cubic_matrix, resize_host
from dav2_jax.vit import PATCH

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def check_rgb(image) -> np.ndarray:
    """Return `image` as a NumPy array if it is RGB uint8 [H, W, 3]; raise ValueError saying what is wrong."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB uint8 image of shape [H, W, 3], got dtype {image.dtype} {list(image.shape)}; "
            "convert floats in [0, 1] with (x * 255).round().astype(np.uint8)"
        )
    if image.ndim != 3 or image.shape[-1] != 3:
        hint = " (grayscale: stack it to 3 channels)" if image.ndim == 2 else (
            " (RGBA: drop the alpha channel)" if image.ndim == 3 and image.shape[-1] == 4 else "")
        raise ValueError(f"expected an RGB uint8 image of shape [H, W, 3], got shape {list(image.shape)}{hint}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"expected a non-empty image, got shape {list(image.shape)}")
    return image


def _multiple_of_14(x: float, min_val: int) -> int:
    y = int(np.round(x / PATCH) * PATCH)  # np.round: half to even, as upstream
    if y < min_val:
        y = int(np.ceil(x / PATCH) * PATCH)
    return y


def network_size(height: int, width: int, input_size: int = 518) -> tuple[int, int]:
    """The official "lower_bound" resize target: short side ≥ input_size, both sides multiples of 14."""
    scale = max(input_size / height, input_size / width)
    return _multiple_of_14(scale * height, input_size), _multiple_of_14(scale * width, input_size)


def preprocess(image: np.ndarray, input_size: int = 518) -> np.ndarray:
    """RGB uint8 [H, W, 3] → network input float32 [h, w, 3] (cv2 INTER_CUBIC resize, ImageNet normalisation).

    Computed in float64 on the host like the original (which resizes the float64 [0, 1] image with OpenCV).
    """
    image = check_rgb(image)
    h, w = image.shape[:2]
    nh, nw = network_size(h, w, input_size)
    x = resize_host(image, cubic_matrix(h, nh), cubic_matrix(w, nw)) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("model",))
def forward(model, params, x):
    """Network input x [B, h, w, 3] → depth [B, h, w] float32 at the network's resolution.

    One program per (B, h, w): callers that batch many image sizes group them by `network_size`.
    """
    return model.apply(params, x)


def resize_depth(depth: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Network-resolution depth [B, h, w] → [B, H, W] as the original (bilinear, align_corners=True), on the host
    (NumPy, in depth's dtype), so that each new image size costs no compilation."""
    depth = np.asarray(depth)
    return resize_align_corners(depth[..., None], *out_hw, xp=np)[..., 0]


def infer_image(model, params, image, input_size: int = 518) -> np.ndarray:
    """Depth for one RGB uint8 image [H, W, 3] → float32 [H, W].

    Relative models give affine-invariant inverse depth (larger = nearer); metric models give metres.
    """
    return infer_batch(model, params, check_rgb(image)[None], input_size)[0]


def infer_batch(model, params, images, input_size: int = 518) -> np.ndarray:
    """Depth for N RGB uint8 images of one size, [N, H, W, 3] (array or list) → float32 [N, H, W]."""
    images = [check_rgb(im) for im in images]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"infer_batch needs images of one size, got {sorted(shapes)}; group them by size")
    x = np.stack([preprocess(im, input_size) for im in images])
    h, w = images[0].shape[:2]
    return resize_depth(forward(model, params, jnp.asarray(x)), (h, w))
