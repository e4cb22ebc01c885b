"""Tiled high-resolution Marigold inference: a global pass, then MultiDiffusion over overlapping latent tiles.

Marigold's U-Net was fine-tuned at about 768 pixels; run on a much larger image it loses the scene's layout, and
its VAE and attention layers grow past memory. `predict_tiled(pipeline, image, resolution)` follows the paper's
high-resolution strategy with the parts that need no extra weights (its refiner network is not public):
1. a global prediction at `processing_resolution` (the ordinary pipeline, ensembles included) fixes the layout
   and, for affine-invariant depth, the one scale and shift every tile must share;
2. the image is resized so its long side is `resolution` and cut, on the latent grid (1/8 of the pixels), into
   overlapping tiles of `tile_size` pixels (default the processing resolution, the size the U-Net knows);
3. the global prediction, upsampled to `resolution` and encoded by the VAE tile by tile, is blended into one
   latent canvas and noised to an intermediate timestep (`strength`: the fraction of the denoising schedule that
   is run again, as image-to-image diffusion does): the coarse layout survives the noise, the detail is redrawn;
4. MultiDiffusion (Bar-Tal et al. 2023): at every remaining step each tile is denoised from its crop of the
   canvas, with its own image latent, and the canvas becomes the weighted average of the tiles' updates; so
   neighbours agree where they overlap at every step, not only at the end;
5. the final canvas is decoded tile by tile and the predictions blended with the same weights at pixel
   resolution, then resized back to the input as the single pass is.
Weights fall off linearly with the distance to a tile's edges over `overlap` pixels (edges on the canvas border
excepted: no neighbour takes over there), and are normalised to sum to one at every position of the canvas.
The VAE, the U-Net step and the decoder each compile once per tile shape, whatever the image size.
"""

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from marigold_jax import image_processing, sampling, schedulers
from marigold_jax.pipeline import MarigoldOutput, MarigoldPipeline

# Half of the schedule: with v1.1's 4 trailing steps the tiles start at t = 499, where the global prediction keeps
# sqrt(alpha_bar) = 0.49 of its amplitude against noise of std 0.87; not tuned on real weights (none are here).
STRENGTH = 0.5


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets of the fewest tiles of `tile` cells covering `length` cells, spread evenly, each pair of
    neighbours sharing at least `overlap` cells. One tile at 0 when `length <= tile`."""
    if length <= tile:
        return [0]
    gaps = -(-(length - tile) // (tile - overlap))
    return [round(i * (length - tile) / gaps) for i in range(gaps + 1)]


def edge_weights(size: tuple[int, int], overlap: int, open_edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Blending weights [h, w] of one tile, float64 in (0, 1]: (d + 1) / (overlap + 1), capped at 1, where d is the
    distance in cells to the nearest tile edge flagged in `open_edges` (top, bottom, left, right): the edges that
    lie inside the canvas. A tile without open edges weighs 1 everywhere."""
    h, w = size
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    distance = np.full(size, np.inf)
    for is_open, d in zip(open_edges, (rows, h - 1 - rows, cols, w - 1 - cols)):
        if is_open:
            distance = np.minimum(distance, d)
    return np.minimum((distance + 1.0) / (overlap + 1.0), 1.0)


def tile_weights(canvas: tuple[int, int], tile: tuple[int, int], boxes, overlap: int, scale: int = 1) -> list:
    """Per-tile weights normalised over the canvas, one [tile_h * scale, tile_w * scale] float64 array per box.

    canvas, tile, boxes (top, left) and overlap are in latent cells; `scale` > 1 gives the same layout at pixel
    resolution (e.g. 8 for decoded tiles). At every canvas position the weights of the tiles covering it sum to 1;
    where one tile alone covers it, its weight is exactly 1.
    """
    (ch, cw), (th, tw) = canvas, tile
    raw = [
        edge_weights((th * scale, tw * scale), overlap * scale, (top > 0, top + th < ch, left > 0, left + tw < cw))
        for top, left in boxes
    ]
    total = np.zeros((ch * scale, cw * scale))
    for (top, left), w in zip(boxes, raw):
        total[top * scale : (top + th) * scale, left * scale : (left + tw) * scale] += w
    return [w / total[t * scale : (t + th) * scale, l * scale : (l + tw) * scale] for (t, l), w in zip(boxes, raw)]


def blend(tiles, boxes, weights, canvas: tuple[int, ...]) -> np.ndarray:
    """Σ_i weights_i · tiles_i on a zero canvas: tiles [n, th, tw, ...] placed at `boxes` (top, left) of `canvas`
    (h, w, ...), weights from `tile_weights` at the tiles' resolution. float64."""
    out = np.zeros(canvas)
    for (top, left), tile, w in zip(boxes, np.asarray(tiles), weights):
        th, tw = tile.shape[:2]
        out[top : top + th, left : left + tw] += w.reshape(w.shape + (1,) * (tile.ndim - 2)) * tile
    return out


def crops(canvas: np.ndarray, boxes, size: tuple[int, int]) -> np.ndarray:
    """The tiles [n, th, tw, ...] of `canvas` [h, w, ...] at `boxes` (top, left) of `size` (th, tw)."""
    return np.stack([canvas[top : top + size[0], left : left + size[1]] for top, left in boxes])


def to_vae_range(prediction: jnp.ndarray, modality: str, use_full_z_range: bool = True) -> jnp.ndarray:
    """Predictions [B, H, W, C] as `sampling.decode_prediction` returns them -> VAE images [B, H, W, 3] in [-1, 1]
    that decode back to them (its inverse: depth replicated to 3 channels, normals' z range, intrinsics' [0, 1])."""
    if modality == "depth":
        return jnp.repeat(prediction * 2.0 - 1.0, 3, axis=-1)
    if modality == "normals":
        return prediction if use_full_z_range else prediction.at[..., 2].set(prediction[..., 2] * 2.0 - 1.0)
    return prediction * 2.0 - 1.0


def check_options(pipeline, resolution: int, processing_resolution: int | None, tile_size: int | None,
                  overlap: int | None, strength: float, steps: int | None) -> tuple[int, int]:
    """Validate `predict_tiled`'s options (defaults resolved); returns (tile, overlap) in latent cells."""
    f = pipeline.vae_scale_factor
    if steps is None:
        raise ValueError("num_inference_steps is not set and the checkpoint has no default_denoising_steps")
    if processing_resolution is None or processing_resolution <= 0 or processing_resolution % f:
        raise ValueError(f"expected a processing_resolution that is a positive multiple of {f} (the global pass's "
                         f"long side; 0 = native does not apply to tiling), got {processing_resolution}")
    if resolution % f or resolution < processing_resolution:
        raise ValueError(f"expected a tiled resolution that is a multiple of {f} and at least processing_resolution "
                         f"{processing_resolution}, got {resolution}")
    tile_size = processing_resolution if tile_size is None else tile_size
    if tile_size <= 0 or tile_size % f:
        raise ValueError(f"expected a tile_size that is a positive multiple of {f}, got {tile_size}")
    overlap = tile_size // 4 // f * f if overlap is None else overlap
    if overlap % f or not 0 <= overlap < tile_size:
        raise ValueError(f"expected an overlap that is a multiple of {f} with 0 <= overlap < tile_size {tile_size}, "
                         f"got {overlap}")
    if not 0 < strength <= 1:
        raise ValueError(f"expected 0 < strength <= 1 (the fraction of the denoising steps run again), got {strength}")
    if int(steps * strength) < 1:
        raise ValueError(f"strength {strength} of {steps} denoising steps leaves no step to run; raise "
                         f"num_inference_steps to at least {int(np.ceil(1 / strength))} or the strength")
    return tile_size // f, overlap // f


def predict_tiled(
    pipeline: MarigoldPipeline,
    image,
    resolution: int,
    processing_resolution: int | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    strength: float = STRENGTH,
    num_inference_steps: int | None = None,
    ensemble_size: int = 1,
    match_input_resolution: bool = True,
    resample_method_input: str = "bilinear",
    resample_method_output: str = "bilinear",
    batch_size: int = 1,
    ensembling_kwargs: dict | None = None,
    latents: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = False,
) -> MarigoldOutput:
    """Predict one RGB uint8 image [H, W, 3] with long side `resolution` in tiles, as the module docstring says.

    resolution: long side of the tiled prediction in pixels (a multiple of 8, >= processing_resolution);
    processing_resolution: the global pass's long side (None: the checkpoint's); tile_size: tile side in pixels
    (None: processing_resolution); overlap: pixels shared by neighbouring tiles (a multiple of 8; None: a quarter
    of the tile); strength in (0, 1]: the last int(num_inference_steps * strength) steps of the schedule are run
    from the noised global prediction (1 with a zero-terminal-SNR schedule: from pure noise, so the global pass
    guides nothing); ensemble_size, ensembling_kwargs: for the global pass. `latents` NHWC [1, h, w, 4T] on the
    latent grid of `resolution` replaces the canvas noise (default drawn from `seed`). `batch_size` tiles (and
    global ensemble members) run at once. Returns `MarigoldOutput` with `prediction` as `predict` gives it for one
    image ([1, H, W, C], or [T, H, W, 3] for intrinsics) and no uncertainty.
    """
    steps = num_inference_steps
    if steps is None:
        steps = pipeline.model_index.get("default_denoising_steps")
    if processing_resolution is None:
        processing_resolution = pipeline.model_index.get("default_processing_resolution")
    images = image_processing.check_rgb_uint8(image)
    if images.shape[0] != 1:
        raise ValueError(f"predict_tiled takes one image [H, W, 3], got a batch of {images.shape[0]}; "
                         "call it per image")
    tile, overlap = check_options(pipeline, resolution, processing_resolution, tile_size, overlap, strength, steps)
    f, modality = pipeline.vae_scale_factor, pipeline.modality
    use_full_z_range = bool(pipeline.model_index.get("use_full_z_range", True))
    global_pass = pipeline.predict(
        images, num_inference_steps=steps, ensemble_size=ensemble_size, processing_resolution=processing_resolution,
        match_input_resolution=False, resample_method_input=resample_method_input, batch_size=batch_size,
        ensembling_kwargs=ensembling_kwargs, seed=seed,
    ).prediction
    x, padding = image_processing.preprocess(images, resolution, resample_method_input, f)
    grid = (x.shape[1] // f, x.shape[2] // f)
    size = (x.shape[1] - padding[0], x.shape[2] - padding[1])
    guide = image_processing.resize(jnp.asarray(global_pass), size, "bilinear")
    guide = image_processing.pad_to_multiple(to_vae_range(guide, modality, use_full_z_range), f)[0]
    box = (min(tile, grid[0]), min(tile, grid[1]))
    boxes = [(t, l) for t in tile_starts(grid[0], box[0], overlap) for l in tile_starts(grid[1], box[1], overlap)]
    weights = tile_weights(grid, box, boxes, overlap)
    pixel_boxes = [(t * f, l * f) for t, l in boxes]
    pixel_box = (box[0] * f, box[1] * f)

    # 1-3: the image latent of every tile, and the global guide blended into one canvas of target latents
    image_latents = pipeline._encode(jnp.asarray(crops(np.asarray(x[0]), pixel_boxes, pixel_box)), batch_size)
    targets = crops(np.asarray(guide).transpose(1, 2, 0, 3), pixel_boxes, pixel_box)  # [n, H, W, T, 3]
    targets = targets.transpose(0, 3, 1, 2, 4).reshape(-1, *pixel_box, 3)
    target_latents = np.asarray(pipeline._encode(jnp.asarray(targets), batch_size))
    n_targets = pipeline.n_targets
    target_latents = target_latents.reshape(len(boxes), n_targets, *box, -1).transpose(0, 2, 3, 1, 4)
    target_latents = target_latents.reshape(len(boxes), *box, -1)
    x0 = blend(target_latents, boxes, weights, (*grid, target_latents.shape[-1])).astype(np.float32)
    if latents is None:  # a stream of its own: the global pass drew its noise from `seed`
        latents = np.random.default_rng([seed, 1]).standard_normal((1, *grid, x0.shape[-1]), dtype=np.float32)
    noise = pipeline._initial_noise(latents, (1, *grid), seed)
    sampler, consts = schedulers.make_plan(pipeline.scheduler, steps)
    first = steps - int(steps * strength)
    alphas_cumprod = schedulers.alphas_cumprod(pipeline.scheduler)
    canvas = np.asarray(schedulers.add_noise(alphas_cumprod, jnp.asarray(x0)[None], noise,
                                             jnp.asarray(consts["timesteps"][first : first + 1])))[0]

    # 4: MultiDiffusion
    text = jnp.asarray(pipeline.folder.empty_text_embedding, jnp.float32)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), 0)  # `predict`'s LCM noise for one image
    chunks = pipeline._chunks(len(boxes), batch_size)
    with tqdm.tqdm(total=(steps - first) * len(chunks), unit="tile batch", disable=None if progress else True,
                   leave=False, desc="tiles x steps") as bar:
        for i in range(first, steps):
            step_consts = {k: jnp.asarray(v[i]) for k, v in consts.items()}
            step_noise = np.asarray(jax.random.normal(jax.random.fold_in(key, i), (*grid, canvas.shape[-1])))
            updated = np.zeros(canvas.shape)
            for start, stop, n in chunks:
                out = sampling.denoise_step(
                    pipeline.unet, pipeline.folder.unet_params, sampler, step_consts,
                    pipeline._place(image_latents[start:stop], n),
                    pipeline._place(jnp.asarray(crops(canvas, boxes[start:stop], box)), n), text,
                    pipeline._place(jnp.asarray(crops(step_noise, boxes[start:stop], box)), n),
                )
                updated += blend(np.asarray(out[: stop - start]), boxes[start:stop], weights[start:stop],
                                 canvas.shape)
                bar.update(1)
            canvas = updated.astype(np.float32)

    # 5: decode tile by tile and blend at pixel resolution
    decoded = np.asarray(pipeline._decode(jnp.asarray(crops(canvas, boxes, box)), batch_size))  # [n, T, H, W, C]
    pixel_weights = tile_weights(grid, box, boxes, overlap, scale=f)
    prediction = blend(decoded.transpose(0, 2, 3, 1, 4), pixel_boxes, pixel_weights,
                       (grid[0] * f, grid[1] * f, n_targets, decoded.shape[-1]))
    prediction = prediction.astype(np.float32).transpose(2, 0, 1, 3)[:, : size[0], : size[1]]
    if modality == "normals" and len(boxes) > 1:  # a blend of unit vectors is shorter; one tile is left as decoded
        prediction = prediction / np.maximum(np.linalg.norm(prediction, axis=-1, keepdims=True), 1e-6)
    if match_input_resolution:
        prediction = pipeline._resize_back(prediction, images.shape[1:3], resample_method_output)
    return MarigoldOutput(prediction=np.asarray(prediction, np.float32))
