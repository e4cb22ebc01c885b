"""Marigold part of `launch/infer.py`: depth, normals or intrinsics for each image, by the checkpoint's modality.

Writes, for each image NAME.ext:
- depth: NAME.npy (float32 H×W in [0, 1], affine-invariant depth, 0 = near), NAME.png (16-bit, min-max) and
  NAME_color.png (Spectral: near = red), as the Depth Anything CLI does;
- normals: NAME.npy (float32 H×W×3 unit vectors: x right, y up, z towards the camera) and NAME.png (RGB,
  (n + 1) / 2 as diffusers' `visualize_normals`);
- intrinsics: NAME.npy (float32 T×H×W×3 in [0, 1]) and NAME_TARGET.png per target, sub-targets of stacked
  targets (e.g. roughness, metallicity) as grey PNGs, linear targets gamma-encoded (diffusers'
  `visualize_intrinsics`);
- with `--uncertainty` (needs `--ensemble` > 1): NAME_uncertainty.npy and NAME_uncertainty.png (per target for
  intrinsics: NAME_TARGET_uncertainty.*), scaled so the 95th percentile is white as diffusers does.
"""

import os
import sys

import numpy as np
import tqdm
from PIL import Image

from launch import images


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


def _save_png(out_dir: str, name: str, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(os.path.join(out_dir, f"{name}.png"))


def _write_uncertainty(out_dir: str, stem: str, uncertainty: np.ndarray) -> None:
    """uncertainty [H, W, 1] or [H, W, 3] -> STEM_uncertainty.npy (as is) and STEM_uncertainty.png."""
    np.save(os.path.join(out_dir, f"{stem}_uncertainty.npy"), uncertainty.astype(np.float32))
    grey = uncertainty[..., 0] if uncertainty.shape[-1] == 1 else uncertainty
    _save_png(out_dir, f"{stem}_uncertainty", uncertainty_grey(grey))


def write_prediction(out_dir: str, stem: str, pipeline, output) -> None:
    """Write one image's `MarigoldOutput` (batch of one) in the layout of the module docstring."""
    prediction = output.prediction
    uncertainty = output.uncertainty
    if pipeline.modality == "depth":
        images.write_depth(out_dir, stem, prediction[0, ..., 0], cmap="Spectral")
    elif pipeline.modality == "normals":
        np.save(os.path.join(out_dir, f"{stem}.npy"), prediction[0])
        _save_png(out_dir, stem, normals_rgb(prediction[0]))
    else:
        np.save(os.path.join(out_dir, f"{stem}.npy"), prediction)
        properties = pipeline.model_index.get("target_properties") or {"target_names": pipeline.target_names}
        for name, pixels in intrinsics_pngs(prediction, properties).items():
            _save_png(out_dir, f"{stem}_{name}", pixels)
    if uncertainty is None:
        return
    if pipeline.modality == "intrinsics":
        for name, u in zip(pipeline.target_names, uncertainty):
            _write_uncertainty(out_dir, f"{stem}_{name}", u)
    else:
        _write_uncertainty(out_dir, stem, uncertainty[0])


def run(args, paths: list[str]) -> tuple[int, list[str]]:
    """Predict every image of `paths` with the Marigold folder `args.model`; returns (written, unreadable paths).

    Uses args.steps, .ensemble, .processing_resolution, .seed, .uncertainty, .batch_size (ensemble members
    denoised at once) and .attention (the U-Net/VAE attention kernel).
    """
    import marigold_jax

    if args.uncertainty and args.ensemble < 2:
        raise SystemExit("--uncertainty needs --ensemble 2 or more (it measures how much the members disagree)")
    pipeline = marigold_jax.load(args.model, attention_impl=args.attention)
    knobs = dict(
        num_inference_steps=args.steps,
        ensemble_size=args.ensemble,
        processing_resolution=args.processing_resolution,
        batch_size=args.batch_size,
        seed=args.seed,
        output_uncertainty=args.uncertainty,
    )
    done, failed = 0, []
    for path in tqdm.tqdm(paths, unit="img", disable=None):
        try:
            rgb = images.read_rgb(path)
        except images.UnreadableImage as e:
            tqdm.tqdm.write(f"skipped {e}", file=sys.stderr)
            failed.append(path)
            continue
        output = pipeline.predict(rgb, **knobs)
        write_prediction(args.output, os.path.splitext(os.path.basename(path))[0], pipeline, output)
        done += 1
    return done, failed
