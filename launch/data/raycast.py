"""Vectorised ray casting of simple scenes: exact planar depth, normals, albedo, Lambertian shading, shadows.

Conventions. World: metres, y up. Camera (OpenCV): x right, y down, z forward; a pixel (row i, column j) looks
along d = ((j + 0.5 - W/2) / f, (i + 0.5 - H/2) / f, 1) in camera space, so the ray parameter t of a hit is its
planar depth z. Every shape is intersected in its own local frame (a rigid transform keeps t), so depth is exact to
float64 rounding. Output normals are camera-space unit vectors in the Marigold / diffusers convention: x right,
y up, z towards the viewer; a visible surface therefore has a negative dot product with the viewing ray expressed
in that frame, (dx, -dy, -dz).
"""

from dataclasses import dataclass, field

import numpy as np

from launch.data import textures

T_MIN = 1e-4  # metres: hits closer than this along a ray are ignored (shadow-ray self-intersection guard)
SHAPE_KINDS = ("box", "ellipsoid", "cylinder", "plane", "room")


@dataclass(frozen=True)
class Shape:
    """A solid or surface in its local frame, placed by `rotation` (local-to-world, columns = local axes) and `center`.

    size: box / room half extents; ellipsoid radii; cylinder (radius, half height, unused) about the local y axis;
    plane (half extent x, unused, half extent z) of the local plane y = 0 (np.inf for an unbounded plane).
    A room is a box seen from inside. materials: one, or one per part (box / room faces -x, +x, -y, +y, -z, +z;
    cylinder side, caps).
    """

    kind: str
    center: np.ndarray
    size: np.ndarray
    materials: tuple
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))


@dataclass(frozen=True)
class Light:
    """A white light: a point light at `vector` (world) or, if `directional`, light coming from direction `vector`.

    Point lights fall off as intensity / (1 + (distance / falloff)^2).
    """

    vector: np.ndarray
    intensity: float
    directional: bool = False
    falloff: float = 3.0


@dataclass(frozen=True)
class Sky:
    """Background for rays that hit nothing: sRGB [0, 1] colours at the horizon and zenith, with fBm clouds."""

    horizon: np.ndarray
    zenith: np.ndarray
    clouds: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    """shapes, lights, ambient (hemisphere light strength), sky, far: hits beyond this planar depth are misses;
    seed: the low-frequency albedo variation (grime) field of the scene."""

    shapes: tuple
    lights: tuple
    ambient: float = 0.3
    sky: Sky | None = None
    far: float = 1000.0
    seed: int = 0


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: position (world), rotation camera-to-world (columns: x right, y down, z forward in world),
    fov: horizontal field of view in radians; principal point at the image centre, square pixels."""

    position: np.ndarray
    rotation: np.ndarray
    fov: float


def focal_px(camera, width):
    """Focal length in pixels for an image `width` pixels wide."""
    return 0.5 * width / np.tan(0.5 * camera.fov)


def look_at(position, target, roll=0.0):
    """Camera-to-world rotation looking from position at target with world y up, rolled by `roll` radians."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


def camera_rays(camera, height, width):
    """World-space ray directions [3, H, W] of the pixel centres; in camera space they are (x, y, 1)."""
    f = focal_px(camera, width)
    x = (np.arange(width) + 0.5 - 0.5 * width) / f
    y = (np.arange(height) + 0.5 - 0.5 * height) / f
    d_cam = np.stack([np.broadcast_to(x[None, :], (height, width)), np.broadcast_to(y[:, None], (height, width)),
                      np.ones((height, width))])
    return _apply(camera.rotation, d_cam)


def _apply(m, v):
    """m @ v for a 3x3 matrix and vectors v [3, ...]."""
    return np.tensordot(m, v, axes=1)


def bounding_radius(shape):
    """Radius of a sphere about shape.center enclosing the shape (np.inf when unbounded)."""
    h = shape.size
    if shape.kind == "ellipsoid":
        return float(h.max())
    if shape.kind == "cylinder":
        return float(np.hypot(h[0], h[1]))
    if shape.kind == "plane":
        return float(np.hypot(h[0], h[2]))
    return float(np.linalg.norm(h))


def intersect(shape, o, d):
    """First hit of rays o + t d in the shape's local frame -> (t, np.inf on a miss; part), shaped like d[0].

    o: [3, ...] broadcastable against d: [3, ...].
    """
    h = shape.size.reshape((3,) + (1,) * (d.ndim - 1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if shape.kind in ("box", "room"):
            inv = 1.0 / d
            t1, t2 = (-h - o) * inv, (h - o) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            if shape.kind == "box":
                axis = np.argmax(lo, axis=0)
                t_near, t_far = lo.max(axis=0), hi.min(axis=0)
                hit = (t_near <= t_far) & (t_near > T_MIN)
                part = 2 * axis + (np.take_along_axis(d, axis[None], 0)[0] < 0)
                return np.where(hit, t_near, np.inf), part
            axis = np.argmin(hi, axis=0)
            t_far = hi.min(axis=0)
            part = 2 * axis + (np.take_along_axis(d, axis[None], 0)[0] > 0)
            return np.where(t_far > T_MIN, t_far, np.inf), part
        zeros = np.zeros(d.shape[1:], int)
        if shape.kind == "ellipsoid":
            o2, d2 = o / h, d / h
            a = np.sum(d2 * d2, axis=0)
            b = np.sum(o2 * d2, axis=0)
            c = np.sum(o2 * o2, axis=0) - 1.0
            disc = b * b - a * c
            t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            return np.where((disc >= 0) & (t > T_MIN), t, np.inf), zeros
        if shape.kind == "cylinder":
            r, hh = shape.size[0], shape.size[1]
            a = d[0] * d[0] + d[2] * d[2]
            b = o[0] * d[0] + o[2] * d[2]
            c = o[0] * o[0] + o[2] * o[2] - r * r
            disc = b * b - a * c
            t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            side_ok = (disc >= 0) & (t_side > T_MIN) & (np.abs(o[1] + t_side * d[1]) <= hh)
            t_cap = (np.where(d[1] > 0, -hh, hh) - o[1]) / d[1]
            cx, cz = o[0] + t_cap * d[0], o[2] + t_cap * d[2]
            cap_ok = (t_cap > T_MIN) & (cx * cx + cz * cz <= r * r)
            t_side = np.where(side_ok, t_side, np.inf)
            t_cap = np.where(cap_ok, t_cap, np.inf)
            return np.minimum(t_side, t_cap), (t_cap < t_side).astype(int)
        if shape.kind == "plane":
            t = -o[1] / d[1]
            x, z = o[0] + t * d[0], o[2] + t * d[2]
            hit = (t > T_MIN) & (np.abs(x) <= shape.size[0]) & (np.abs(z) <= shape.size[2])
            return np.where(hit, t, np.inf), zeros
    raise ValueError(f"unknown shape kind {shape.kind!r}; expected one of {SHAPE_KINDS}")


def surface(shape, p, part):
    """Local unit normals [3, N] (outward; a room's point inward) and surface coordinates uv [2, N] (metres)
    at local points p [3, N]. Box and room faces use (horizontal, vertical) coordinates on walls."""
    n = np.zeros_like(p)
    if shape.kind in ("box", "room"):
        axis, positive = part // 2, part % 2 == 1
        sign = np.where(positive, 1.0, -1.0) * (1.0 if shape.kind == "box" else -1.0)
        n[axis, np.arange(p.shape[1])] = sign
        uv = np.where(axis == 0, p[[2, 1]], np.where(axis == 1, p[[0, 2]], p[[0, 1]]))
        return n, uv
    if shape.kind == "ellipsoid":
        n = p / shape.size[:, None] ** 2
        return n / np.linalg.norm(n, axis=0), np.stack([np.arctan2(p[2], p[0]) * shape.size.mean(), p[1]])
    if shape.kind == "cylinder":
        cap = part == 1
        n[1] = np.where(cap, np.sign(p[1]), 0.0)
        rad = np.hypot(p[0], p[2])
        n[0], n[2] = np.where(cap, 0.0, p[0] / rad), np.where(cap, 0.0, p[2] / rad)
        uv = np.where(cap, p[[0, 2]], np.stack([np.arctan2(p[2], p[0]) * shape.size[0], p[1]]))
        return n, uv
    n[1] = 1.0
    return n, p[[0, 2]]


def _window(shape, camera, height, width):
    """Conservative pixel rectangle (row0, row1, col0, col1) containing the shape's image, or None if behind."""
    r = bounding_radius(shape)
    if shape.kind == "room" or not np.isfinite(r):
        return 0, height, 0, width
    x, y, z = camera.rotation.T @ (shape.center - camera.position)
    if z + r <= 0:
        return None
    if z - r <= 1e-6:
        return 0, height, 0, width
    f = focal_px(camera, width)
    bounds = []
    for c, size in ((y, height), (x, width)):
        hi = (c + r) / ((z - r) if c + r >= 0 else (z + r))
        lo = (c - r) / ((z - r) if c - r <= 0 else (z + r))
        a = int(np.clip(np.floor(lo * f + 0.5 * size - 0.5), 0, size))
        b = int(np.clip(np.ceil(hi * f + 0.5 * size - 0.5) + 1, 0, size))
        bounds += [a, b]
    return None if bounds[0] >= bounds[1] or bounds[2] >= bounds[3] else tuple(bounds)


def cast(scene, camera, d):
    """Closest primary hits over the scene of camera rays d [3, H, W] (world)
    -> (t [H, W], np.inf = miss; shape index [H, W], -1 = miss; part [H, W])."""
    shape = d.shape[1:]
    t_best, index, part = np.full(shape, np.inf), np.full(shape, -1), np.zeros(shape, int)
    for k, s in enumerate(scene.shapes):
        win = _window(s, camera, *shape)
        if win is None:
            continue
        r0, r1, c0, c1 = win
        o = (s.rotation.T @ (camera.position - s.center))[:, None, None]
        t, p = intersect(s, o, _apply(s.rotation.T, d[:, r0:r1, c0:c1]))
        tb = t_best[r0:r1, c0:c1]
        closer = t < tb
        tb[closer] = t[closer]
        index[r0:r1, c0:c1][closer] = k
        part[r0:r1, c0:c1][closer] = p[closer]
    return t_best, index, part


def _occluded(shapes, p, to_light, light):
    """True where a bounded solid blocks the way from surface points p [3, N] (world) to the light.

    to_light: unit directions [3, N]. Each shape is first tested against its bounding sphere with quantities shared
    by all points (cheap), then exactly on the few candidate points.
    """
    blocked = np.zeros(p.shape[1], bool)
    if light.directional:
        e1 = np.cross(to_light[:, 0], [0.0, 0.0, 1.0] if abs(to_light[2, 0]) < 0.9 else [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(to_light[:, 0], e1)
        q1, q2, along = e1 @ p, e2 @ p, to_light[:, 0] @ p
        dist = np.full(p.shape[1], np.inf)
    else:
        u = -to_light
        dist = np.linalg.norm(light.vector[:, None] - p, axis=0)
    for s in shapes:
        if s.kind in ("room", "plane"):
            continue
        r = bounding_radius(s)
        if light.directional:
            near = (np.square(s.center @ e1 - q1) + np.square(s.center @ e2 - q2) <= r * r) & (
                s.center @ to_light[:, 0] + r > along)
        else:
            c = s.center - light.vector
            b = c @ u
            near = (b * b >= c @ c - r * r) & (b > -r) & (b - r < dist)
        near &= ~blocked
        if not near.any():
            continue
        idx = np.flatnonzero(near)
        o = s.rotation.T @ (p[:, idx] - s.center[:, None])
        t, _ = intersect(s, o, s.rotation.T @ to_light[:, idx])
        blocked[idx[t < dist[idx]]] = True
    return blocked


def _sky_colour(sky, d):
    """sRGB [3, N] in [0, 1] of the sky seen along world directions d [3, N]."""
    dn = d / np.linalg.norm(d, axis=0)
    e = np.clip(dn[1], 0.0, 1.0)
    rgb = sky.horizon[:, None] + (sky.zenith - sky.horizon)[:, None] * np.sqrt(e)
    if sky.clouds > 0:
        up = np.maximum(dn[1], 0.02)
        q = np.stack([dn[0] / up, np.zeros(len(up)), dn[2] / up]) * 0.8
        c = textures.fbm(q, 1.0, np.zeros(len(up)), sky.seed, octaves=5)
        cover = np.clip((c - (1.0 - sky.clouds)) * 3.0, 0.0, 1.0) * np.clip(dn[1] * 8.0, 0.0, 1.0)
        rgb = rgb * (1 - cover) + 0.92 * cover
    return np.clip(rgb, 0.0, 1.0)


def render(scene, camera, height, width, exposure=True):
    """Ray-cast a scene.

    Returns a dict of arrays: image uint8 [H, W, 3] sRGB; depth float32 [H, W] planar metres (0 where invalid);
    valid bool [H, W] (False where the ray hits nothing within scene.far); normals float32 [H, W, 3] (camera frame,
    x right, y up, z towards the viewer; 0 where invalid); albedo float32 [H, W, 3] linear in [0, 1]; shading
    float32 [H, W] (scalar irradiance, white lights). Where valid, image = round(255 * clip(albedo * shading)^(1/2.2)).
    exposure: scale the shading so that the 90th percentile of valid linear luminance maps to 0.8 after gamma (the
    Hypersim tone-mapping rule), as a camera's auto-exposure would.
    """
    d_img = camera_rays(camera, height, width)
    t_img, index_img, part_img = cast(scene, camera, d_img)
    t_img[t_img > scene.far] = np.inf
    valid = np.isfinite(t_img).ravel()
    hit = np.flatnonzero(valid)
    t, index, part = t_img.ravel()[hit], index_img.ravel()[hit], part_img.ravel()[hit]
    d = d_img.reshape(3, -1)[:, hit]
    dist = t * np.linalg.norm(d, axis=0)
    d_unit = d / np.linalg.norm(d, axis=0)
    p = camera.position[:, None] + t * d
    n = np.zeros_like(p)
    alb = np.zeros_like(p)
    f = focal_px(camera, width)
    variation = textures.fbm(p, 0.6, dist / f, scene.seed, octaves=2)
    for k, s in enumerate(scene.shapes):
        m = np.flatnonzero(index == k)
        if not len(m):
            continue
        p_local = s.rotation.T @ (p[:, m] - s.center[:, None])
        n_local, uv = surface(s, p_local, part[m])
        nw = s.rotation @ n_local
        cos = np.sum(nw * d_unit[:, m], axis=0)
        nw *= np.where(cos > 0, -1.0, 1.0)
        n[:, m] = nw
        footprint = dist[m] / (f * np.maximum(np.abs(cos), 0.15))
        if len(s.materials) == 1:
            alb[:, m] = textures.albedo(s.materials[0], p_local, uv, footprint, variation[m])
            continue
        for j, mat in enumerate(s.materials):
            mj = part[m] == j
            if mj.any():
                alb[:, m[mj]] = textures.albedo(mat, p_local[:, mj], uv[:, mj], footprint[mj], variation[m[mj]])
    shade = scene.ambient * (0.7 + 0.3 * n[1])
    for light in scene.lights:
        if light.directional:
            to_l = np.broadcast_to((light.vector / np.linalg.norm(light.vector))[:, None], p.shape)
            irradiance = light.intensity
        else:
            to_l = light.vector[:, None] - p
            l_dist = np.linalg.norm(to_l, axis=0)
            to_l = to_l / l_dist
            irradiance = light.intensity / (1.0 + (l_dist / light.falloff) ** 2)
        lit = np.maximum(np.sum(n * to_l, axis=0), 0.0) * irradiance
        on = np.flatnonzero(lit > 0)
        lit[on[_occluded(scene.shapes, p[:, on] + 1e-3 * n[:, on], to_l[:, on], light)]] = 0.0
        shade += lit
    if exposure and len(hit):
        lum = np.array([0.3, 0.59, 0.11]) @ (alb * shade)
        p90 = np.percentile(lum, 90)
        if p90 > 1e-6:
            shade *= 0.8**2.2 / p90
    n_pix = height * width
    rgb = np.zeros((3, n_pix))
    rgb[:, hit] = np.clip(alb * shade, 0.0, 1.0) ** (1 / 2.2)
    if scene.sky is not None and len(hit) < n_pix:
        rgb[:, ~valid] = _sky_colour(scene.sky, d_img.reshape(3, -1)[:, ~valid])
    normals = np.zeros((3, n_pix))
    normals[:, hit] = (camera.rotation.T @ n) * np.array([1.0, -1.0, -1.0])[:, None]
    albedo, shading, depth = np.zeros((3, n_pix)), np.zeros(n_pix), np.zeros(n_pix)
    albedo[:, hit], shading[hit], depth[hit] = alb, shade, t

    def hwc(a):
        return np.moveaxis(a.reshape(3, height, width), 0, -1)

    return {
        "image": hwc(np.round(rgb * 255)).astype(np.uint8),
        "depth": depth.reshape(height, width).astype(np.float32),
        "valid": valid.reshape(height, width),
        "normals": hwc(normals).astype(np.float32),
        "albedo": hwc(albedo).astype(np.float32),
        "shading": shading.reshape(height, width).astype(np.float32),
    }
