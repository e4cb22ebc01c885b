"""Procedural materials for the synthetic scenes: value noise, fractal noise and surface patterns.

Every pattern is a pure function of surface coordinates in metres, evaluated only on the pixels that see the
surface. Patterns are band-limited by the pixel footprint (metres covered by one pixel at the hit point): a pattern
component whose frequency approaches the pixel rate fades to its mean instead of aliasing, a cheap stand-in for
mip-mapping. Albedo is linear reflectance in [0, 1].
"""

from dataclasses import dataclass

import numpy as np

PATTERNS = ("plain", "checker", "stripes", "bricks", "tiles", "planks", "noise", "wood", "marble")


@dataclass(frozen=True)
class Material:
    """A surface material.

    pattern: one of PATTERNS. palette: [K, 3] linear RGB in [0, 1], K >= 2; the pattern value in [0, 1] is mapped
    piecewise linearly across it. scale: the pattern's cell size / period in metres. angle: rotation of 2-D patterns
    in their surface plane (radians). grime: amplitude of a low-frequency multiplicative variation. seed: picks this
    material's noise (offsets into the shared lattice).
    """

    pattern: str
    palette: np.ndarray
    scale: float
    angle: float = 0.0
    grime: float = 0.15
    seed: int = 0


_N = 32  # value-noise lattice period (a small table stays in cache)
_LATTICE = np.random.default_rng(20240611).random((_N + 1,) * 3, dtype=np.float32)
_LATTICE[_N], _LATTICE[:, _N], _LATTICE[:, :, _N] = _LATTICE[0], _LATTICE[:, 0], _LATTICE[:, :, 0]
_LATTICE = _LATTICE.ravel()  # periodic, padded by one so the +1 corners of the last cell need no wrap
_STRIDES = np.array([(_N + 1) ** 2, _N + 1, 1])
_CORNERS = np.array([dx * _STRIDES[0] + dy * _STRIDES[1] + dz * _STRIDES[2]
                     for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)])[:, None]


def _offsets(seed):
    """Per-seed offsets into the lattice: 3 floats in [0, 32) (a low-discrepancy sequence) and 3 integers."""
    floats = (seed * np.array([0.6180339887, 0.7548776662, 0.5698402910]) % 1.0 * _N)[:, None]
    return floats, seed * np.array([7919, 104729, 1299709]) % _N


def value_noise(p, seed):
    """Smooth value noise in [0, 1] at points p: [3, N] (lattice period 1), trilinear with a smoothstep fade.

    One fixed periodic lattice (period 32) serves every seed: the seed picks a random offset into it.
    """
    p = (p + _offsets(seed)[0]).astype(np.float32)
    base = np.floor(p)
    f = p - base
    w = f * f * (3.0 - 2.0 * f)
    cell = base % _N
    flat = (cell[0] * _STRIDES[0] + cell[1] * _STRIDES[1] + cell[2]).astype(np.int64)
    vals = _LATTICE[flat[None, :] + _CORNERS]  # [8, N], corner order (dx, dy, dz) binary
    x = vals[:4] + (vals[4:] - vals[:4]) * w[0]  # [4, N]: (dy, dz)
    y = x[:2] + (x[2:] - x[:2]) * w[1]  # [2, N]: dz
    return y[0] + (y[1] - y[0]) * w[2]


def cell_random(i, j, seed):
    """A uniform [0, 1) value per integer cell (i, j): int64 arrays of one shape (period 32 cells)."""
    oi, oj, ok = _offsets(seed)[1]
    return _LATTICE[((i + oi) % _N) * _STRIDES[0] + ((j + oj) % _N) * _STRIDES[1] + ok]


def band_limit(frequency, footprint):
    """Contrast kept for a pattern of `frequency` cycles/metre seen with `footprint` metres/pixel.

    1 up to a quarter of the pixel rate, 0 from half of it (Nyquist) on, linear between.
    """
    return np.clip(2.0 - 4.0 * frequency * footprint, 0.0, 1.0)


def fbm(p, frequency, footprint, seed, octaves=4):
    """Fractal (fBm) value noise at points p [3, N], about [0, 1].

    Octaves double the frequency and halve the amplitude; each is band-limited by the footprint [N].
    """
    total = np.zeros(p.shape[1])
    norm = 0.0
    amp = 1.0
    for k in range(octaves):
        f = frequency * 2.0**k
        keep = band_limit(f, footprint)
        total += amp * keep * (value_noise(p * f, seed + k) - 0.5)
        norm += amp
        amp *= 0.5
    return 0.5 + total / norm * 1.6


def _rotate(uv, angle):
    if angle == 0.0:
        return uv
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * uv[0] + s * uv[1], -s * uv[0] + c * uv[1]])


def _square(x, duty):
    """A square wave of period 1 with the given duty cycle, in {0, 1}."""
    return (x - np.floor(x) < duty).astype(np.float64)


def _pattern(m, p, uv, footprint):
    """The pattern value in [0, 1] of material m at local points p [3, N], surface coordinates uv [2, N]."""
    s = m.scale
    u, v = _rotate(uv, m.angle)
    if m.pattern == "plain":
        return 0.25 * fbm(p, 1.0 / s, footprint, m.seed, octaves=3)
    if m.pattern == "checker":
        c = (np.floor(u / s) + np.floor(v / s)) % 2
        return 0.5 + band_limit(0.5 / s, footprint) * (c - 0.5)
    if m.pattern == "stripes":
        c = _square(u / s, 0.5)
        return 0.5 + band_limit(1.0 / s, footprint) * (c - 0.5)
    if m.pattern in ("bricks", "tiles"):
        width, height = (2.0 * s, s) if m.pattern == "bricks" else (s, s)
        row = np.floor(v / height)
        shift = 0.5 * (row % 2) if m.pattern == "bricks" else 0.0
        col = np.floor(u / width + shift)
        tone = 0.6 * cell_random(col.astype(np.int64), row.astype(np.int64), m.seed)
        mortar_w = 0.08 * height
        fu = (u / width + shift - col) * width
        fv = (v / height - row) * height
        mortar = ((fu < mortar_w) | (fv < mortar_w)).astype(np.float64)
        mortar_mean = 1.0 - (1.0 - mortar_w / width) * (1.0 - mortar_w / height)
        keep = band_limit(0.5 / mortar_w, footprint)
        mortar = mortar_mean + keep * (mortar - mortar_mean)
        tone = 0.3 + band_limit(1.0 / width, footprint) * (tone - 0.3)
        return tone * (1 - mortar) + 1.0 * mortar
    if m.pattern == "planks":
        row = np.floor(v / s)
        offset = cell_random(row.astype(np.int64), np.zeros_like(row, dtype=np.int64), m.seed) * 7.0
        plank = np.floor(u / (6 * s) + offset)
        tone = 0.5 * cell_random(row.astype(np.int64), plank.astype(np.int64), m.seed + 1)
        streak_p = np.stack([u * 0.6 / s, (v - row * s) * 9.0 / s, row + 13.0 * plank])
        grain = value_noise(streak_p, m.seed + 2) * band_limit(9.0 / s, footprint)
        gap = band_limit(1.0 / (0.04 * s), footprint) * _square(v / s, 0.04)
        return np.clip(tone + 0.4 * grain, 0, 0.95) * (1 - gap) + gap
    if m.pattern == "noise":
        return fbm(p, 1.0 / s, footprint, m.seed)
    if m.pattern == "wood":
        warp = fbm(p, 0.7 / s, footprint, m.seed, octaves=2)
        r = np.sqrt(p[0] ** 2 + p[2] ** 2) / (0.15 * s) + 3.0 * warp
        ring = (r - np.floor(r)) ** 2.5
        return 0.5 + band_limit(1.0 / (0.15 * s), footprint) * (ring - 0.5)
    if m.pattern == "marble":
        turb = fbm(p, 1.0 / s, footprint, m.seed, octaves=5)
        vein = 1.0 - np.abs(np.sin((p[0] + p[1] * 0.5) * np.pi / s + 9.0 * turb))
        return vein**6
    raise ValueError(f"unknown pattern {m.pattern!r}; expected one of {PATTERNS}")


def albedo(m, p, uv, footprint, variation):
    """Linear RGB albedo [3, N] in [0, 1] of material m at local points p [3, N] with surface uv [2, N] (metres).

    variation: [N] low-frequency noise in [0, 1] shared by the scene, applied with the material's grime amplitude.
    """
    t = np.clip(_pattern(m, p, uv, footprint), 0.0, 1.0)
    knots = np.linspace(0.0, 1.0, len(m.palette))
    rgb = np.stack([np.interp(t, knots, m.palette[:, c]) for c in range(3)])
    return np.clip(rgb * (1.0 + m.grime * 2.0 * (variation - 0.5)), 0.0, 1.0)


def _hsv_to_linear(h, s, v):
    """HSV (all in [0, 1]) -> linear RGB: the HSV colour is taken as sRGB-like and decoded with gamma 2.2."""
    i = np.floor(h * 6) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][int(i)]
    return np.array(rgb) ** 2.2


def palette(rng, hue=None, sat=(0.15, 0.75), val=(0.35, 0.95), n=None, spread=0.08):
    """A random palette [K, 3] (linear RGB): K related colours around one hue with varied value and saturation."""
    n = n or int(rng.integers(2, 5))
    h0 = rng.random() if hue is None else hue
    cols = []
    for _ in range(n):
        h = (h0 + rng.normal(0, spread)) % 1.0
        cols.append(_hsv_to_linear(h, rng.uniform(*sat), rng.uniform(*val)))
    return np.clip(np.array(cols), 0.0, 0.9)


def random_material(rng, role):
    """A material fitting a surface role.

    role: "floor", "wall", "ceiling", "object", "ground", "road", "marking" (a dashed road line), "building",
    "foliage", "trunk" or "rock".
    """
    seed = int(rng.integers(1 << 30))
    angle = float(rng.choice([0.0, np.pi / 2])) if rng.random() < 0.8 else float(rng.uniform(0, np.pi))
    if role == "floor":
        kind = rng.choice(["planks", "tiles", "checker", "noise", "marble"], p=[0.35, 0.2, 0.15, 0.15, 0.15])
        if kind == "planks":
            pal = palette(rng, hue=rng.uniform(0.04, 0.11), sat=(0.4, 0.8), val=(0.25, 0.75), n=3)
            return Material("planks", pal, rng.uniform(0.12, 0.25), angle, 0.2, seed)
        if kind == "marble":
            return Material("marble", _marble_palette(rng), rng.uniform(0.4, 1.2), angle, 0.05, seed)
        pal = palette(rng, n=2 if kind == "checker" else 3)
        return Material(str(kind), pal, rng.uniform(0.25, 0.6), angle, 0.2, seed)
    if role == "wall":
        kind = rng.choice(["plain", "stripes", "bricks", "tiles", "noise"], p=[0.4, 0.2, 0.2, 0.1, 0.1])
        if kind == "bricks":
            pal = np.concatenate([palette(rng, hue=rng.uniform(0.0, 0.07), sat=(0.4, 0.8), val=(0.35, 0.7), n=2),
                                  palette(rng, sat=(0.0, 0.1), val=(0.7, 0.9), n=1)])
            return Material("bricks", pal, rng.uniform(0.07, 0.14), 0.0, 0.25, seed)
        pal = palette(rng, sat=(0.05, 0.5), val=(0.55, 0.95), n=2, spread=0.05)
        scale = rng.uniform(0.08, 0.3) if kind == "stripes" else rng.uniform(0.3, 1.0)
        return Material(str(kind), pal, scale, 0.0 if kind == "stripes" else angle, 0.12, seed)
    if role == "ceiling":
        return Material("plain", palette(rng, sat=(0.0, 0.1), val=(0.8, 0.95), n=2), 1.0, 0.0, 0.08, seed)
    if role == "ground":
        kind = rng.choice(["grass", "sand", "paving", "gravel"])
        if kind == "paving":
            pal = np.concatenate([palette(rng, sat=(0.0, 0.2), val=(0.35, 0.7), n=2),
                                  palette(rng, sat=(0.0, 0.1), val=(0.2, 0.3), n=1)])
            return Material(str(rng.choice(["tiles", "bricks"])), pal, rng.uniform(0.2, 0.5), angle, 0.3, seed)
        hue, sat, val = {"grass": (0.25, (0.35, 0.65), (0.2, 0.5)), "sand": (0.1, (0.2, 0.45), (0.5, 0.8)),
                         "gravel": (0.08, (0.0, 0.15), (0.25, 0.7))}[str(kind)]
        pal = palette(rng, hue=hue + rng.normal(0, 0.02), sat=sat, val=val, n=4, spread=0.03)
        return Material("noise", pal, rng.uniform(0.3, 1.5), 0.0, 0.4, seed)
    if role == "road":
        pal = palette(rng, sat=(0.0, 0.08), val=(0.3, 0.5), n=3)
        return Material("noise", pal, rng.uniform(0.2, 0.6), 0.0, 0.3, seed)
    if role == "marking":
        pal = np.array([_hsv_to_linear(0, 0, rng.uniform(0.3, 0.45)), _hsv_to_linear(0.15, 0.1, 0.9)])
        return Material("stripes", pal, 3.0, np.pi / 2, 0.2, seed)
    if role == "building":
        kind = rng.choice(["bricks", "tiles", "plain", "stripes"])
        pal = palette(rng, sat=(0.0, 0.45), val=(0.35, 0.9), n=3)
        return Material(str(kind), pal, rng.uniform(0.3, 1.5), 0.0, 0.3, seed)
    if role == "foliage":
        pal = palette(rng, hue=rng.uniform(0.2, 0.38), sat=(0.35, 0.8), val=(0.15, 0.55), n=4, spread=0.04)
        return Material("noise", pal, rng.uniform(0.3, 0.8), 0.0, 0.3, seed)
    if role == "trunk":
        pal = palette(rng, hue=rng.uniform(0.05, 0.1), sat=(0.3, 0.6), val=(0.15, 0.4), n=3, spread=0.02)
        return Material("wood", pal, rng.uniform(0.3, 0.6), 0.0, 0.2, seed)
    if role == "rock":
        pal = palette(rng, hue=rng.uniform(0.05, 0.15), sat=(0.0, 0.25), val=(0.3, 0.7), n=4, spread=0.03)
        return Material("noise", pal, rng.uniform(0.2, 0.6), 0.0, 0.3, seed)
    if role == "object":
        kind = str(rng.choice(PATTERNS))
        if kind == "wood":
            pal = palette(rng, hue=rng.uniform(0.04, 0.11), sat=(0.4, 0.8), val=(0.25, 0.8), n=3)
        elif kind == "marble":
            pal = _marble_palette(rng)
        else:
            pal = palette(rng)
        scale = {"wood": rng.uniform(0.3, 0.8), "marble": rng.uniform(0.2, 0.6)}.get(kind, rng.uniform(0.05, 0.3))
        return Material(kind, pal, scale, angle, 0.15, seed)
    raise ValueError(f"unknown material role {role!r}")


def _marble_palette(rng):
    base = palette(rng, sat=(0.0, 0.15), val=(0.75, 0.95), n=1)
    vein = palette(rng, sat=(0.0, 0.4), val=(0.1, 0.45), n=1)
    return np.concatenate([base, base * 0.9, vein])
