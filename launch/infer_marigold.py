"""Marigold part of `launch/infer.py`: depth, normals or intrinsics for each image, by the checkpoint's modality.

Writes, for each image NAME.ext (`--save` picks among them):
- depth: NAME.npy (float32 H×W in [0, 1], affine-invariant depth, 0 = near), NAME.png (16-bit, min-max) and
  NAME_color.png (Spectral: near = red), as the Depth Anything CLI does, or NAME.pfm (float32) on request;
- normals: NAME.npy (float32 H×W×3 unit vectors: x right, y up, z towards the camera) and NAME.png (RGB,
  (n + 1) / 2 as diffusers' `visualize_normals`);
- intrinsics: NAME.npy (float32 T×H×W×3 in [0, 1]) and NAME_TARGET.png per target, sub-targets of stacked
  targets (e.g. roughness, metallicity) as grey PNGs, linear targets gamma-encoded (diffusers'
  `visualize_intrinsics`);
- with `--uncertainty` (needs `--ensemble` > 1): NAME_uncertainty.npy and NAME_uncertainty.png (per target for
  intrinsics: NAME_TARGET_uncertainty.*), scaled so the 95th percentile is white as diffusers does.

Images of one size run `--batch-size` at a time (all their ensemble members, `--ensemble-batch` per image per
denoising pass), split over the `data` axis of all local devices. Each image's initial noise is drawn from
`--seed` alone, as if it ran by itself, so its result does not depend on the images it is batched with (LCM's
noise between steps, with more than one step, is drawn per pass).

With `--tiled-size S`, each image is predicted at long side S by `marigold_jax.tiling.predict_tiled` (a global pass
at `--processing-resolution`, then MultiDiffusion over tiles of that size, `--batch-size` tiles at once,
`--tiled-strength` of the steps run again), one image at a time.
"""

import sys

import numpy as np
import tqdm

from launch import images, outputs


def _uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def normals_rgb(normals: np.ndarray) -> np.ndarray:
    """Unit normals [H, W, 3] -> RGB uint8 [H, W, 3], as diffusers' `visualize_normals` (no axis flips)."""
    return _uint8((normals + 1.0) * 0.5)


def uncertainty_grey(uncertainty: np.ndarray) -> np.ndarray:
    """Uncertainty [H, W] or [H, W, 3] -> uint8, its 95th percentile at 255, as diffusers' `visualize_uncertainty`."""
    top = float(np.percentile(uncertainty, 95))
    return np.clip(uncertainty * 255 / max(top, 1e-12), 0, 255).astype(np.uint8)


def intrinsics_pngs(targets: np.ndarray, target_properties: dict) -> dict[str, np.ndarray]:
    """Targets [T, H, W, 3] in [0, 1] -> {name: uint8 image}, as diffusers' `visualize_intrinsics` (grey cmap)."""

    def linear(x, props):
        if props.get("up_to_scale", False):
            x = x / max(float(x.max()), 1e-6)
        return x ** (1 / 2.2)

    out = {}
    names = target_properties.get("target_names") or [f"target{i}" for i in range(len(targets))]
    for name, image in zip(names, targets):
        props = target_properties.get(name, {})
        space = props.get("prediction_space", "srgb")
        if space == "stack":
            for i, sub in enumerate(props.get("sub_target_names", [])):
                if sub is None:
                    continue
                sub_image = image[..., i]
                if target_properties.get(sub, {}).get("prediction_space", "srgb") == "linear":
                    sub_image = linear(sub_image, target_properties[sub])
                out[sub] = _uint8(sub_image)
        elif space == "linear":
            image = linear(image, props)
        out[name] = _uint8(image)
    return out


def _write_uncertainty(stem: str, uncertainty: np.ndarray) -> None:
    """uncertainty [H, W, 1] or [H, W, 3] -> STEM_uncertainty.npy (as is) and STEM_uncertainty.png."""
    outputs.save_npy(f"{stem}_uncertainty.npy", uncertainty.astype(np.float32))
    grey = uncertainty[..., 0] if uncertainty.shape[-1] == 1 else uncertainty
    outputs.save_png(f"{stem}_uncertainty.png", uncertainty_grey(grey))


def _target_properties(pipeline) -> dict:
    return pipeline.model_index.get("target_properties") or {"target_names": pipeline.target_names}


def save_kinds(args, pipeline) -> list[str]:
    """The --save list for this checkpoint's modality (depth: npy, png16, color, pfm; else npy, png)."""
    allowed = ["npy", "png16", "color", "pfm"] if pipeline.modality == "depth" else ["npy", "png"]
    default = ["npy", "png16", "color"] if pipeline.modality == "depth" else ["npy", "png"]
    if args.save is None:
        return default
    kinds = [k.strip() for k in args.save.split(",") if k.strip()]
    if not kinds or any(k not in allowed for k in kinds):
        raise SystemExit(f"--save for a Marigold {pipeline.modality} checkpoint expects some of "
                         f"{', '.join(allowed)}, got {args.save!r}")
    return kinds


def suffixes(pipeline, kinds, uncertainty: bool) -> list[str]:
    """What `write_prediction` appends to an image's stem, for output planning."""
    if pipeline.modality == "depth":
        out = [outputs.DEPTH_SUFFIXES[k] for k in kinds]
    elif pipeline.modality == "normals":
        out = [{"npy": ".npy", "png": ".png"}[k] for k in kinds]
    else:
        names = list(intrinsics_pngs(np.zeros((pipeline.n_targets, 1, 1, 3)), _target_properties(pipeline)))
        out = (([".npy"] if "npy" in kinds else []) + ([f"_{n}.png" for n in names] if "png" in kinds else []))
    if uncertainty:
        prefixes = [f"_{n}" for n in pipeline.target_names] if pipeline.modality == "intrinsics" else [""]
        out += [f"{p}_uncertainty{e}" for p in prefixes for e in (".npy", ".png")]
    return out


def write_prediction(stem: str, pipeline, prediction, uncertainty, kinds) -> None:
    """Write one image's prediction ([1, H, W, C], or [T, H, W, 3] for intrinsics) and uncertainty (same layout,
    or None) at `stem` (a path without suffix) as the module docstring says."""
    if pipeline.modality == "depth":
        outputs.write_depth(stem, prediction[0, ..., 0], kinds, cmap="Spectral")
    elif pipeline.modality == "normals":
        if "npy" in kinds:
            outputs.save_npy(f"{stem}.npy", prediction[0])
        if "png" in kinds:
            outputs.save_png(f"{stem}.png", normals_rgb(prediction[0]))
    else:
        if "npy" in kinds:
            outputs.save_npy(f"{stem}.npy", prediction)
        if "png" in kinds:
            for name, pixels in intrinsics_pngs(prediction, _target_properties(pipeline)).items():
                outputs.save_png(f"{stem}_{name}.png", pixels)
    if uncertainty is None:
        return
    if pipeline.modality == "intrinsics":
        for name, u in zip(pipeline.target_names, uncertainty):
            _write_uncertainty(f"{stem}_{name}", u)
    else:
        _write_uncertainty(stem, uncertainty[0])


def initial_noise(pipeline, size: tuple[int, int], n_images: int, ensemble: int, resolution: int, seed: int):
    """Initial latents NHWC [n_images * ensemble, h, w, 4T]: each image gets what `seed` draws for it alone."""
    from marigold_jax.image_processing import max_edge_size

    h, w = size if resolution == 0 else max_edge_size(*size, resolution)
    f = pipeline.vae_scale_factor
    shape = (ensemble, -(-h // f), -(-w // f), pipeline.vae.latent_channels * pipeline.n_targets)
    return np.concatenate([np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)] * n_images)


def _groups(inputs, batch_size: int):
    """Yield (indices, None) batches of equal-size readable images, and ([index], UnreadableImage) for the rest."""
    by_size = {}
    for i, item in enumerate(inputs):
        try:
            by_size.setdefault(images.image_size(item.path), []).append(i)
        except images.UnreadableImage as e:
            yield [i], e
    for members in by_size.values():
        for start in range(0, len(members), batch_size):
            yield members[start : start + batch_size], None


def run(args, inputs, mesh) -> tuple[int, list[str]]:
    """Predict every image of `inputs` with the Marigold folder `args.model`; returns (written, unreadable paths).

    Uses args.steps, .ensemble, .ensemble_batch, .processing_resolution, .seed, .uncertainty, .batch_size
    (images at once; tiles at once with .tiled_size), .tiled_size, .tiled_strength, .dtype and .attention (the
    U-Net/VAE attention kernel).
    """
    import jax.numpy as jnp

    import marigold_jax

    videos = [item.path for item in inputs if item.is_video]
    if videos:
        raise SystemExit(f"video inputs ({', '.join(videos[:3])}) need a Depth Anything V2 checkpoint; Marigold "
                         "predicts images only")
    if args.uncertainty and args.ensemble < 2:
        raise SystemExit("--uncertainty needs --ensemble 2 or more (it measures how much the members disagree)")
    if args.tiled_size is None and args.tiled_strength is not None:
        raise SystemExit("--tiled-strength only applies with --tiled-size")
    if args.tiled_size is not None and args.uncertainty:
        raise SystemExit("--uncertainty does not apply with --tiled-size: the tiled pass predicts once per image")
    pipeline = marigold_jax.load(args.model, dtype=jnp.dtype(args.dtype), attention_impl=args.attention)
    kinds = save_kinds(args, pipeline)
    try:
        stems = outputs.plan_stems(inputs, args.output, suffixes(pipeline, kinds, args.uncertainty))
    except outputs.OutputConflict as e:
        raise SystemExit(str(e)) from e
    if mesh.devices.size > 1:
        pipeline = pipeline.replicate(mesh, "data")
    resolution = args.processing_resolution
    if resolution is None:
        resolution = pipeline.model_index.get("default_processing_resolution")
    if resolution is None:
        raise SystemExit(f"{args.model} names no default_processing_resolution; pass --processing-resolution")
    if args.tiled_size is not None:
        _check_tiling(args, pipeline, resolution)
    targets = pipeline.n_targets if pipeline.modality == "intrinsics" else 1
    done, failed = 0, []
    with tqdm.tqdm(total=len(inputs), unit="img", disable=None) as bar:
        for group, error in _groups(inputs, args.batch_size):
            readable, rgbs, errors = images.read_many(inputs, group) if error is None else ([], [], [error])
            for e in errors:
                tqdm.tqdm.write(f"skipped {e}", file=sys.stderr)
            failed.extend(inputs[i].path for i in group if i not in readable)
            bar.update(len(errors))
            if not rgbs:
                continue
            if args.tiled_size is not None:
                for i, rgb in zip(readable, rgbs):
                    write_prediction(stems[i], pipeline, _predict_tiled(args, pipeline, rgb, resolution), None, kinds)
                    bar.update(1)
                done += len(readable)
                continue
            output = pipeline.predict(
                np.stack(rgbs), num_inference_steps=args.steps, ensemble_size=args.ensemble,
                processing_resolution=resolution, batch_size=len(rgbs) * args.ensemble_batch,
                latents=initial_noise(pipeline, rgbs[0].shape[:2], len(rgbs), args.ensemble, resolution, args.seed),
                seed=args.seed, output_uncertainty=args.uncertainty,
            )
            for j, i in enumerate(readable):
                rows = slice(j * targets, (j + 1) * targets)
                uncertainty = None if output.uncertainty is None else output.uncertainty[rows]
                write_prediction(stems[i], pipeline, output.prediction[rows], uncertainty, kinds)
                bar.update(1)
            done += len(readable)
    return done, failed


def _check_tiling(args, pipeline, resolution: int) -> None:
    from marigold_jax import tiling

    if resolution <= 0 or args.tiled_size <= resolution:
        raise SystemExit(f"--tiled-size must be above --processing-resolution {resolution} (0 = native does not "
                         f"apply to tiling), got {args.tiled_size}")
    steps = args.steps if args.steps is not None else pipeline.model_index.get("default_denoising_steps")
    strength = tiling.STRENGTH if args.tiled_strength is None else args.tiled_strength
    try:
        tiling.check_options(pipeline, args.tiled_size, resolution, None, None, strength, steps)
    except ValueError as e:
        raise SystemExit(f"--tiled-size/--tiled-strength/--steps: {e}") from e


def _predict_tiled(args, pipeline, rgb, resolution: int) -> np.ndarray:
    from marigold_jax import tiling

    strength = tiling.STRENGTH if args.tiled_strength is None else args.tiled_strength
    return tiling.predict_tiled(
        pipeline, rgb, args.tiled_size, processing_resolution=resolution, strength=strength,
        num_inference_steps=args.steps, ensemble_size=args.ensemble, batch_size=args.batch_size, seed=args.seed,
        progress=True,
    ).prediction
