"""Tiled high-resolution inference for Depth Anything V2: images too large for one pass at the wanted resolution.

`infer_tiled(model, params, image, resolution, input_size)`:
1. a global pass at `input_size` (the official single pass) gives the scene's layout;
2. the image is resized with the official preprocessing so its short side is `resolution` (a multiple of 14,
   above `input_size`) and cut into overlapping square tiles of `input_size` pixels, each run through the network
   at its own size (one compiled program for every tile);
3. each tile's output is fitted to the global pass, resampled to the same grid, by least squares in scale and
   shift (disparity is affine-invariant; for metric models this keeps the tiles' metres consistent);
4. the tiles are blended with weights that fall off linearly over the overlap towards each tile's border, so no
   seam shows where one tile ends, then resized back to the image size as the single pass is.
"""

import numpy as np

from dav2_jax.preprocess import check_rgb, forward, preprocess, resize_depth


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length`, neighbours overlapping by at least `overlap`."""
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))
    return [int(round(s)) for s in np.linspace(0, length - tile, count)]


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """[tile] weights: 1 inside, falling linearly to 1 / (overlap + 1) at either border over `overlap` pixels."""
    distance = np.minimum(np.arange(tile), np.arange(tile)[::-1]) + 1.0
    return np.minimum(distance / (overlap + 1.0), 1.0)


def fit_affine(x: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(scale, shift) minimising ||scale * x + shift - target||² over all pixels (float64)."""
    x, target = x.astype(np.float64).ravel(), target.astype(np.float64).ravel()
    xc, tc = x - x.mean(), target - target.mean()
    scale = float(xc @ tc / (xc @ xc)) if xc @ xc > 0 else 1.0
    return scale, float(target.mean() - scale * x.mean())


def infer_tiled(model, params, image, resolution: int, input_size: int = 518, overlap: int | None = None,
                batch_size: int = 4, run=None) -> np.ndarray:
    """Depth for one RGB uint8 image [H, W, 3] → float32 [H, W], predicted at short side `resolution` in tiles.

    overlap: pixels shared by neighbouring tiles on the `resolution` grid (default: a quarter of `input_size`).
    run: optional `f(x [B, s, s, 3] float32) -> [B, s, s]`, e.g. a sharded forward pass; default `forward`.
    Relative models give affine-invariant disparity, metric models metres, as `infer_image`.
    """
    image = check_rgb(image)
    if resolution % 14 or resolution < input_size:
        raise ValueError(f"expected a tiled resolution that is a multiple of 14 and at least input_size "
                         f"{input_size}, got {resolution}")
    overlap = input_size // 4 if overlap is None else overlap
    if not 0 <= overlap < input_size:
        raise ValueError(f"expected 0 <= overlap < input_size {input_size}, got {overlap}")
    run = run or (lambda x: np.asarray(forward(model, params, x)))
    height, width = image.shape[:2]
    global_net = run(preprocess(image, input_size)[None])[0]
    x = preprocess(image, resolution)
    grid = x.shape[:2]
    reference = resize_depth(global_net[None], grid)[0]
    boxes = [(top, left) for top in tile_starts(grid[0], input_size, overlap)
             for left in tile_starts(grid[1], input_size, overlap)]
    tile_h, tile_w = min(input_size, grid[0]), min(input_size, grid[1])
    weights = np.outer(blend_weights(tile_h, overlap), blend_weights(tile_w, overlap))
    total, weight_sum = np.zeros(grid, np.float64), np.zeros(grid, np.float64)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        tiles = np.stack([x[t : t + tile_h, l : l + tile_w] for t, l in chunk])
        tiles = np.concatenate([tiles, np.zeros((batch_size - len(chunk), *tiles.shape[1:]), tiles.dtype)])
        for (top, left), depth in zip(chunk, run(tiles)):
            window = (slice(top, top + tile_h), slice(left, left + tile_w))
            scale, shift = fit_affine(depth, reference[window])
            total[window] += weights * (scale * depth + shift)
            weight_sum[window] += weights
    return resize_depth((total / weight_sum).astype(np.float32)[None], (height, width))[0]
