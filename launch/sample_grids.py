"""Pictures of predictions for people: one row per held-out sample, input | prediction | ground truth.

How a prediction is drawn follows from its *kind* alone (a task's `prediction_kind`), with the colours of the CLIs:
- "disparity": affine-invariant disparity [H, W] (Depth Anything relative models). Least-squares scale and shift
  in disparity space against the ground truth (`launch.eval.alignment.align_disparity`), then prediction and
  ground truth disparity in Spectral_r (near = red) over the ground truth's range;
- "depth": affine-invariant depth [H, W] (Marigold). Aligned in depth space (`alignment.align_depth`), then both
  in Spectral (near = red) over the ground truth's range;
- "metric": depth in metres [H, W]. Not aligned (its scale is what is learnt): clipped to the depth range, then
  as "depth";
- "normals": unit normals [H, W, 3] (x right, y up, z towards the camera) as RGB (n + 1) / 2;
- "intrinsics": targets [T, H, W, 3] in [0, 1], one prediction | ground-truth pair per target, in the CLI's
  colours (`launch.infer_marigold.intrinsics_pngs`).
Ground-truth pixels without a label are black. Tiles smaller than `MIN_TILE` pixels are enlarged by an integer
factor (nearest neighbour) so that small training crops stay visible.
"""

import math

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont

from launch.eval import alignment
from launch.infer_marigold import intrinsics_pngs, normals_rgb

KINDS = ("disparity", "depth", "metric", "normals", "intrinsics")
MIN_TILE = 128  # pixels: smaller tiles are enlarged
GAP = 4  # pixels between tiles
HEADER = 18  # pixels of the label row
BACKGROUND = 255


def depth_for_display(kind, prediction, depth, valid, min_depth, max_depth):
    """(prediction, ground truth) as the values drawn for a depth-like kind: disparity for "disparity", metres else.

    prediction: [H, W] raw model output; depth: [H, W] ground truth in metres; valid: [H, W] bool of labelled
    pixels (further restricted to finite depths inside (min_depth, max_depth)). Both outputs are float64 [H, W];
    the ground truth is NaN where unlabelled. Without any labelled pixel the prediction is returned as is.
    """
    depth = np.asarray(depth, np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.asarray(valid, bool) & np.isfinite(depth) & (depth > min_depth) & (depth < max_depth)
    prediction = np.asarray(prediction, np.float64)
    if prediction.shape != depth.shape:
        raise ValueError(f"prediction {list(prediction.shape)} and ground truth {list(depth.shape)} differ in size")
    safe = np.where(valid, depth, 1.0)
    truth = np.where(valid, 1.0 / safe if kind == "disparity" else safe, np.nan)
    if not valid.any():
        return prediction, truth
    if kind == "disparity":
        aligned, _, _ = alignment.align_disparity(prediction, depth, valid, min_depth, max_depth)
        return 1.0 / aligned, truth
    if kind == "depth":
        aligned, _, _ = alignment.align_depth(prediction, depth, valid, min_depth, max_depth)
        return aligned, truth
    if kind == "metric":
        return np.clip(prediction, min_depth, max_depth), truth
    raise ValueError(f"{kind!r} is not a depth-like prediction kind: expected 'disparity', 'depth' or 'metric'")


def colour(values, low, high, cmap):
    """values [H, W] → uint8 RGB [H, W, 3] through matplotlib's `cmap` over [low, high]; NaN → black."""
    import matplotlib

    span = high - low if high > low else 1.0
    unit = np.clip((np.nan_to_num(values, nan=low) - low) / span, 0.0, 1.0)
    rgb = np.round(matplotlib.colormaps[cmap](unit)[..., :3] * 255).astype(np.uint8)
    rgb[np.isnan(values)] = 0
    return rgb


def depth_tiles(kind, prediction, depth, valid, min_depth, max_depth):
    """[prediction, ground truth] uint8 RGB tiles of one sample of a depth-like kind (see the module docstring)."""
    shown, truth = depth_for_display(kind, prediction, depth, valid, min_depth, max_depth)
    cmap = "Spectral_r" if kind == "disparity" else "Spectral"
    labelled = truth[np.isfinite(truth)]
    low, high = (labelled.min(), labelled.max()) if labelled.size else (shown.min(), shown.max())
    return [colour(shown, low, high, cmap), colour(truth, low, high, cmap)]


def normals_tiles(prediction, normals, valid):
    """[prediction, ground truth] uint8 RGB tiles of unit normals [H, W, 3]; unlabelled ground truth is black."""
    truth = normals_rgb(np.asarray(normals, np.float32))
    truth[~np.asarray(valid, bool)] = 0
    return [normals_rgb(np.asarray(prediction, np.float32)), truth]


def intrinsics_tiles(prediction, targets, valid, target_properties):
    """[prediction, ground truth] per target: 2·T uint8 RGB tiles of targets [T, H, W, 3] in [0, 1].

    target_properties: diffusers' Marigold `target_properties` ({"target_names": [...], NAME: {...}}).
    """
    names = list(target_properties["target_names"])
    predicted = intrinsics_pngs(np.asarray(prediction, np.float32), target_properties)
    true = intrinsics_pngs(np.asarray(targets, np.float32), target_properties)
    tiles = []
    for name in names:
        truth = _rgb(true[name]).copy()
        truth[~np.asarray(valid, bool)] = 0
        tiles += [_rgb(predicted[name]), truth]
    return tiles


def labels(kind, target_properties=None):
    """Column titles of `render`'s grid for `kind`."""
    if kind == "intrinsics":
        names = list(target_properties["target_names"])
        return ["input"] + [f"{name} {side}" for name in names for side in ("prediction", "ground truth")]
    return ["input", "prediction", "ground truth"]


def render(kind, images, predictions, targets, valid, min_depth=1e-3, max_depth=math.inf, target_properties=None):
    """A grid with one row per sample: input | prediction | ground truth, drawn as `kind` says.

    images: uint8 [N, H, W, 3], the network inputs as RGB; predictions: the task's outputs, [N, H, W] (depth-like
    kinds), [N, H, W, 3] (normals) or [N, T, H, W, 3] (intrinsics); targets: ground truth of the same shape (depth
    in metres for the depth-like kinds); valid: bool [N, H, W], labelled pixels. min_depth, max_depth: metres, the
    range depth-like predictions are aligned and clipped to. target_properties: intrinsics only (see
    `intrinsics_tiles`). Returns uint8 RGB [HEADER + N·(s·H + GAP), C·(s·W + GAP) − GAP, 3] for C columns and
    enlargement s = ceil(MIN_TILE / min(H, W)) (at least 1).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown prediction kind {kind!r}: expected one of {KINDS}")
    if kind == "intrinsics" and not target_properties:
        raise ValueError("intrinsics samples need target_properties ({'target_names': [...], ...}) to be drawn")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    rows = []
    for image, prediction, target, mask in zip(images, predictions, targets, valid, strict=True):
        if kind == "normals":
            tiles = normals_tiles(prediction, target, mask)
        elif kind == "intrinsics":
            tiles = intrinsics_tiles(prediction, target, mask, target_properties)
        else:
            tiles = depth_tiles(kind, prediction, target, mask, min_depth, max_depth)
        rows.append([image, *tiles])
    return grid(rows, labels(kind, target_properties))


def grid(rows, titles):
    """Tiles (uint8 RGB, all [H, W, 3]) in rows under one label row; white gaps. See `render` for the size."""
    h, w = rows[0][0].shape[:2]
    scale = max(1, math.ceil(MIN_TILE / min(h, w)))
    th, tw = h * scale, w * scale
    columns = len(titles)
    out = np.full((HEADER + len(rows) * (th + GAP), columns * (tw + GAP) - GAP, 3), BACKGROUND, np.uint8)
    for r, row in enumerate(rows):
        if len(row) != columns:
            raise ValueError(f"row {r} has {len(row)} tiles for {columns} titles")
        top = HEADER + r * (th + GAP)
        for c, tile in enumerate(row):
            if tile.shape != (h, w, 3):
                raise ValueError(f"tile {c} of row {r} is {list(tile.shape)}, expected [{h}, {w}, 3]")
            left = c * (tw + GAP)
            out[top : top + th, left : left + tw] = tile.repeat(scale, 0).repeat(scale, 1)
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, title in enumerate(titles):
        draw.text((c * (tw + GAP) + 2, 3), title, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save(directory, step, picture):
    """Write `picture` (uint8 RGB) as `directory`/STEP.png (the folder is created; local or a URL epath knows)."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f"{int(step)}.png").open("wb") as f:
        Image.fromarray(picture).save(f, format="PNG")


def drop_after(directory, step):
    """Remove the `directory`/STEP.png pictures of steps after `step` (what an interrupted run drew after its
    checkpoint); a missing folder is fine."""
    directory = epath.Path(directory)
    if not directory.exists():
        return
    for path in directory.glob("*.png"):
        if path.stem.isdigit() and int(path.stem) > step:
            path.unlink()


def _rgb(pixels):
    return pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=-1)
