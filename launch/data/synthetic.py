"""The procedural synthetic data set: one random scene per (seed, index), rendered by ray casting.

`generate(seed, index, height, width, kind)` is a pure function (numpy only): the same arguments give the same
arrays on any machine. `python -m launch.data.synthetic OUT.png` writes the sample grid shown in docs/data.md.
"""

import sys

import numpy as np

from launch.data import raycast, scenes


def generate(seed, index, height, width, kind="mixed"):
    """One synthetic sample.

    Returns image uint8 [H, W, 3] (sRGB), depth float32 [H, W] (planar metres, 0 where invalid), valid bool
    [H, W] (False on sky), normals float32 [H, W, 3] (camera frame: x right, y up, z towards the viewer), albedo
    float32 [H, W, 3] (linear, [0, 1]) and shading float32 [H, W]; see `raycast.render`.
    """
    rng = np.random.default_rng([seed, index])
    scene, camera = scenes.random_scene(rng, kind)
    return raycast.render(scene, camera, height, width)


def colorize_depth(depth, valid):
    """Visualise depth: inverse depth normalised by its 2nd / 98th percentiles through Spectral_r; invalid black.

    depth: [H, W] metres, valid: bool [H, W] -> uint8 [H, W, 3].
    """
    from matplotlib import colormaps

    disp = np.where(valid, 1.0 / np.maximum(depth, 1e-6), 0.0)
    if valid.any():
        lo, hi = np.percentile(disp[valid], [2, 98])
        disp = np.clip((disp - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    rgb = (colormaps["Spectral_r"](disp)[..., :3] * 255).round().astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def sample_grid(seed=0, columns=8, height=120, width=160):
    """A uint8 [4 * H, columns * W, 3] grid: rows image, depth (colour-mapped), normals, albedo (gamma-encoded).

    Column i shows `generate(seed, i, height, width, kind)`, kind alternating indoor (even i) and outdoor (odd i).
    """
    rows = [[], [], [], []]
    for i in range(columns):
        s = generate(seed, i, height, width, ("indoor", "outdoor")[i % 2])
        rows[0].append(s["image"])
        rows[1].append(colorize_depth(s["depth"], s["valid"]))
        rows[2].append(np.where(s["valid"][..., None], (s["normals"] + 1) * 127.5, 0).round().astype(np.uint8))
        rows[3].append((s["albedo"] ** (1 / 2.2) * 255).round().astype(np.uint8))
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)


def main(argv):
    from PIL import Image

    if len(argv) != 1:
        raise SystemExit("usage: python -m launch.data.synthetic OUT.png")
    Image.fromarray(sample_grid()).save(argv[0])


if __name__ == "__main__":
    main(sys.argv[1:])
