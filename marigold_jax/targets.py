"""Marigold's training targets as 3-channel images in [-1, 1] (what the frozen VAE encodes), host-side numpy.

- depth: per image, the 2 % and 98 % quantiles of the valid positive depths map to -1 and 1, clipped; invalid pixels
  keep their normalised raw value (depth 0 becomes -1) and are excluded only by the latent mask; replicated to RGB;
- normals: unit camera-space vectors (x right, y up, z towards the viewer) fed as they are;
- intrinsics, appearance: [albedo, material] in [0, 1] (material R roughness, G metallicity, B 0) → x * 2 - 1;
- intrinsics, lighting: [albedo, shading, residual]: albedo clipped to [0, 1]; shading and residual share one scale,
  cut = max(q98(shading), q98(residual)) over the whole arrays, clipped to [0, cut] and divided by cut; → x * 2 - 1.
"""

import numpy as np

MODALITIES = ("depth", "normals", "iid_appearance", "iid_lighting")
TARGET_NAMES = {
    "depth": ("depth",),
    "normals": ("normals",),
    "iid_appearance": ("albedo", "material"),
    "iid_lighting": ("albedo", "shading", "residual"),
}


def check_modality(modality):
    if modality not in MODALITIES:
        raise ValueError(f"expected a modality in {MODALITIES}, found {modality!r}")
    return modality


def normalize_depth(depth, valid, quantile=0.02):
    """depth [H, W] metres, valid [H, W] bool → float32 [H, W] in [-1, 1] (linear quantiles, as `torch.quantile`)."""
    depth = np.asarray(depth, np.float32)
    usable = valid & (depth > 0)
    if not usable.any():
        raise ValueError("depth normalisation needs at least one valid positive depth, found none")
    lo, hi = np.quantile(depth[usable], [quantile, 1.0 - quantile])
    lo, hi = np.float32(lo), np.float32(hi)
    return np.clip((depth - lo) / max(hi - lo, np.float32(1e-12)) * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)


def signed(x):
    """[0, 1] → [-1, 1] (x * 2 - 1), float32."""
    return np.asarray(x, np.float32) * np.float32(2.0) - np.float32(1.0)


def lighting_targets(albedo, shading, residual, quantile=0.98):
    """Hypersim lighting targets → float32 [H, W, 9] in [-1, 1]: albedo, shading, residual (each [H, W, 3], linear)."""
    cut = max(np.quantile(shading, quantile), np.quantile(residual, quantile))
    cut = np.float32(max(cut, 1e-12))
    parts = [np.clip(albedo, 0.0, 1.0), np.clip(shading, 0.0, cut) / cut, np.clip(residual, 0.0, cut) / cut]
    return np.concatenate([signed(p) for p in parts], axis=-1)


def encode_target(sample, modality, quantile=0.02):
    """(target float32 [H, W, 3T] in [-1, 1], valid bool [H, W]) from a source sample.

    depth: sample["depth"] metres + sample["valid"]; normals: sample["normals"] unit vectors (valid where their norm
    > 0.5); iid_appearance: "albedo", "material", optional "mask"; iid_lighting: "albedo", "shading" (1 or 3
    channels), "residual" (optional, zero when absent).
    """
    check_modality(modality)
    if modality == "depth":
        valid = np.asarray(sample["valid"], bool)
        d = normalize_depth(sample["depth"], valid, quantile)
        return np.repeat(d[..., None], 3, axis=-1), valid
    if modality == "normals":
        n = np.asarray(sample["normals"], np.float32)
        return n, np.linalg.norm(n, axis=-1) > 0.5
    albedo = np.asarray(sample["albedo"], np.float32)
    ones = np.ones(albedo.shape[:2], bool)
    if modality == "iid_appearance":
        target = np.concatenate([signed(albedo), signed(sample["material"])], axis=-1)
        return target, np.asarray(sample.get("mask", ones), bool)
    shading = np.asarray(sample["shading"], np.float32)
    if shading.ndim == 2:
        shading = np.repeat(shading[..., None], 3, axis=-1)
    residual = np.asarray(sample.get("residual", np.zeros_like(albedo)), np.float32)
    return lighting_targets(albedo, shading, residual), ones
