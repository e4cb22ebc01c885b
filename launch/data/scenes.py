"""Random scene layouts for the synthetic data set: furnished rooms and outdoor streets / parks.

Everything is drawn from one numpy Generator, so a layout is a pure function of its seed. Sizes are in metres and
roughly realistic (rooms 3-8 m wide, tables 0.45-0.8 m high, buildings up to 30 m), so that depth is metric.
"""

import numpy as np

from launch.data.raycast import Camera, Light, Scene, Shape, Sky, look_at
from launch.data.textures import random_material

KINDS = ("indoor", "outdoor", "mixed")


def yaw(angle):
    """Rotation about the world y axis by `angle` radians (local-to-world)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _box(center, half, mat, angle=0.0):
    return Shape("box", np.array(center, float), np.array(half, float), (mat,), yaw(angle))


def _ellipsoid(center, radii, mat, angle=0.0):
    return Shape("ellipsoid", np.array(center, float), np.array(radii, float), (mat,), yaw(angle))


def _cylinder(center, radius, half_height, mats, angle=0.0):
    return Shape("cylinder", np.array(center, float), np.array([radius, half_height, radius]), mats, yaw(angle))


def _furniture(rng, x, z, angle, room_height):
    """One random piece of furniture standing on the floor at (x, z) -> (shapes, footprint radius)."""
    kind = rng.choice(["table", "cabinet", "ball", "column", "sofa", "lamp", "crates", "rug"],
                      p=[0.2, 0.18, 0.12, 0.1, 0.1, 0.1, 0.1, 0.1])
    mat = random_material(rng, "object")
    if kind == "table":
        hw, hd, top = rng.uniform(0.35, 0.9), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.8)
        leg = rng.uniform(0.02, 0.04)
        r = yaw(angle)
        shapes = [_box((x, top, z), (hw, 0.02, hd), mat, angle)]
        for sx in (-1, 1):
            for sz in (-1, 1):
                off = r @ np.array([sx * (hw - 2 * leg), 0.0, sz * (hd - 2 * leg)])
                shapes.append(_box((x + off[0], top / 2, z + off[2]), (leg, top / 2, leg), mat, angle))
        if rng.random() < 0.7:
            thing = random_material(rng, "object")
            rad = rng.uniform(0.06, 0.2)
            if rng.random() < 0.5:
                shapes.append(_ellipsoid((x, top + 0.02 + rad, z), (rad, rad, rad), thing))
            else:
                hh = rng.uniform(0.05, 0.2)
                shapes.append(_cylinder((x, top + 0.02 + hh, z), rad * 0.7, hh, (thing,)))
        return shapes, float(np.hypot(hw, hd))
    if kind == "cabinet":
        hw, hh, hd = rng.uniform(0.2, 0.6), rng.uniform(0.25, min(1.0, room_height / 2 - 0.1)), rng.uniform(0.15, 0.3)
        return [_box((x, hh, z), (hw, hh, hd), mat, angle)], float(np.hypot(hw, hd))
    if kind == "ball":
        rad = rng.uniform(0.1, 0.45)
        return [_ellipsoid((x, rad, z), (rad, rad, rad), mat, angle)], rad
    if kind == "column":
        rad = rng.uniform(0.1, 0.35)
        hh = room_height / 2 if rng.random() < 0.4 else rng.uniform(0.15, 0.6)
        return [_cylinder((x, hh, z), rad, hh, (mat, random_material(rng, "object")), angle)], rad
    if kind == "sofa":
        hw, hd = rng.uniform(0.5, 1.1), rng.uniform(0.35, 0.5)
        r = yaw(angle)
        back = r @ np.array([0.0, 0.0, -hd + 0.1])
        return [_box((x, 0.22, z), (hw, 0.22, hd), mat, angle),
                _box((x + back[0], 0.45, z + back[2]), (hw, 0.45, 0.1), mat, angle)], float(np.hypot(hw, hd))
    if kind == "lamp":
        hh = rng.uniform(0.5, 0.9)
        shade = rng.uniform(0.12, 0.25)
        return [_cylinder((x, hh, z), 0.02, hh, (mat,)),
                _cylinder((x, 0.01, z), 0.15, 0.01, (mat,)),
                _ellipsoid((x, 2 * hh, z), (shade, shade * 0.8, shade), random_material(rng, "object"))], 0.2
    if kind == "crates":
        shapes, y = [], 0.0
        for _ in range(int(rng.integers(1, 4))):
            h = rng.uniform(0.15, 0.4)
            shapes.append(_box((x, y + h, z), (h, h, h), random_material(rng, "object"), angle + rng.normal(0, 0.3)))
            y += 2 * h
        return shapes, 0.6
    hw, hd = rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.9)
    return [_box((x, 0.005, z), (hw, 0.005, hd), mat, angle)], 0.0


def _wall_picture(rng, half):
    """A thin framed picture hung on a random wall of a room with half extents `half` (centre at floor level)."""
    axis = int(rng.choice([0, 2]))
    side = float(rng.choice([-1.0, 1.0]))
    other = 2 - axis
    w, h = rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.5)
    c = np.zeros(3)
    c[axis] = side * (half[axis] - 0.02)
    c[other] = rng.uniform(-half[other] + w + 0.1, half[other] - w - 0.1)
    c[1] = rng.uniform(1.2, max(1.3, 2 * half[1] - h - 0.2))
    size = np.zeros(3)
    size[axis], size[other], size[1] = 0.02, w, h
    return Shape("box", c, size, (random_material(rng, "object"),))


def indoor(rng):
    """A closed furnished room with one or two ceiling lights -> (Scene, Camera)."""
    half = np.array([rng.uniform(1.5, 4.0), rng.uniform(1.2, 1.7), rng.uniform(1.5, 4.5)])
    wall, accent = random_material(rng, "wall"), random_material(rng, "wall")
    walls = [wall, wall, wall, wall]
    walls[int(rng.integers(4))] = accent if rng.random() < 0.5 else wall
    mats = (walls[0], walls[1], random_material(rng, "floor"), random_material(rng, "ceiling"), walls[2], walls[3])
    shapes = [Shape("room", np.array([0.0, half[1], 0.0]), half, mats)]
    cam = np.array([rng.uniform(-half[0] + 0.4, half[0] - 0.4), rng.uniform(0.9, min(1.9, 2 * half[1] - 0.4)),
                    rng.uniform(-half[2] + 0.4, half[2] - 0.4)])
    for _ in range(50):
        target = np.array([rng.uniform(-half[0], half[0]), rng.uniform(0.2, 1.4), rng.uniform(-half[2], half[2])])
        if np.hypot(*(target - cam)[[0, 2]]) > 1.8:
            break
    fov = np.radians(rng.uniform(50, 90))
    camera = Camera(cam, look_at(cam, target, rng.normal(0, 0.05)), fov)
    heading = np.arctan2(*(target - cam)[[0, 2]])
    placed = [(cam[0], cam[2], 0.5)]
    for _ in range(int(rng.integers(3, 9))):
        for _ in range(30):
            if rng.random() < 0.7:
                a, dist = heading + rng.uniform(-0.5, 0.5) * fov, rng.uniform(1.0, 6.0)
                x, z = cam[0] + dist * np.sin(a), cam[2] + dist * np.cos(a)
            else:
                x, z = rng.uniform(-half[0], half[0]), rng.uniform(-half[2], half[2])
            if abs(x) > half[0] - 0.5 or abs(z) > half[2] - 0.5:
                continue
            new, radius = _furniture(rng, x, z, rng.uniform(0, 2 * np.pi), 2 * half[1])
            if all(np.hypot(x - px, z - pz) > radius + pr + 0.05 for px, pz, pr in placed):
                shapes += new
                placed.append((x, z, radius))
                break
    shapes += [_wall_picture(rng, half) for _ in range(int(rng.integers(0, 3)))]
    lights = [Light(np.array([rng.uniform(-half[0], half[0]) * 0.8, 2 * half[1] - 0.25,
                              rng.uniform(-half[2], half[2]) * 0.8]), rng.uniform(1.5, 3.0),
                    falloff=rng.uniform(2.0, 4.0)) for _ in range(int(rng.integers(1, 3)))]
    return Scene(tuple(shapes), tuple(lights), ambient=rng.uniform(0.12, 0.35), seed=int(rng.integers(1 << 30))), camera


def outdoor(rng):
    """Ground, optional road, buildings, trees, rocks and props under a sun and a cloudy sky -> (Scene, Camera)."""
    cam = np.array([0.0, rng.uniform(1.2, 2.5), 0.0])
    heading = rng.uniform(0, 2 * np.pi)
    pitch = np.radians(rng.uniform(-20, 3))
    fov = np.radians(rng.uniform(50, 90))
    target = cam + np.array([np.sin(heading) * np.cos(pitch), np.sin(pitch), np.cos(heading) * np.cos(pitch)])
    camera = Camera(cam, look_at(cam, target, rng.normal(0, 0.03)), fov)
    inf = np.inf
    shapes = [Shape("plane", np.zeros(3), np.array([inf, 0.0, inf]), (random_material(rng, "ground"),))]
    if rng.random() < 0.5:
        road_angle = heading + rng.normal(0, 0.3)
        side = rng.uniform(-4, 4)
        off = yaw(road_angle) @ np.array([side, 0.0, 0.0])
        shapes.append(Shape("plane", off + [0, 0.01, 0], np.array([3.5, 0.0, 400.0]),
                            (random_material(rng, "road"),), yaw(road_angle)))
        shapes.append(Shape("plane", off + [0, 0.02, 0], np.array([0.08, 0.0, 400.0]),
                            (random_material(rng, "marking"),), yaw(road_angle)))
    placed = [(0.0, 0.0, 1.0)]

    def spot(near, far, radius):
        for _ in range(30):
            a = heading + rng.uniform(-0.6, 0.6) * fov if rng.random() < 0.8 else rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(near, far)
            x, z = dist * np.sin(a), dist * np.cos(a)
            if all(np.hypot(x - px, z - pz) > radius + pr for px, pz, pr in placed):
                placed.append((x, z, radius))
                return x, z
        return None

    for _ in range(int(rng.integers(0, 7))):
        hw, hh, hd = rng.uniform(2, 8), rng.uniform(2, 15), rng.uniform(2, 8)
        xz = spot(12, 80, np.hypot(hw, hd))
        if xz:
            shapes.append(_box((xz[0], hh, xz[1]), (hw, hh, hd), random_material(rng, "building"),
                               rng.uniform(0, np.pi)))
    for _ in range(int(rng.integers(0, 9))):
        trunk_h, crown = rng.uniform(0.8, 2.5), rng.uniform(0.8, 3.0)
        xz = spot(4, 50, crown)
        if xz:
            shapes.append(_cylinder((xz[0], trunk_h, xz[1]), rng.uniform(0.08, 0.3), trunk_h,
                                    (random_material(rng, "trunk"),)))
            shapes.append(_ellipsoid((xz[0], 2 * trunk_h + crown * 0.8, xz[1]),
                                     (crown, crown * rng.uniform(0.8, 1.5), crown), random_material(rng, "foliage")))
    for _ in range(int(rng.integers(1, 8))):
        kind = rng.choice(["rock", "crate", "ball", "pole"])
        size = rng.uniform(0.2, 1.5)
        xz = spot(2.5, 25, size)
        if not xz:
            continue
        x, z = xz
        if kind == "rock":
            r = np.array([size, size * rng.uniform(0.4, 0.9), size * rng.uniform(0.6, 1.2)])
            shapes.append(_ellipsoid((x, 0.3 * r[1], z), r, random_material(rng, "rock"), rng.uniform(0, np.pi)))
        elif kind == "crate":
            shapes.append(_box((x, size / 2, z), (size / 2,) * 3, random_material(rng, "object"),
                               rng.uniform(0, np.pi)))
        elif kind == "ball":
            shapes.append(_ellipsoid((x, size / 2, z), (size / 2,) * 3, random_material(rng, "object")))
        else:
            hh = rng.uniform(1.0, 4.0)
            shapes.append(_cylinder((x, hh, z), rng.uniform(0.04, 0.2), hh, (random_material(rng, "object"),)))
    elevation, azimuth = np.radians(rng.uniform(15, 70)), rng.uniform(0, 2 * np.pi)
    sun = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)])
    horizon = np.array([rng.uniform(0.7, 0.95), rng.uniform(0.75, 0.92), rng.uniform(0.8, 0.98)])
    zenith = np.array([rng.uniform(0.15, 0.45), rng.uniform(0.35, 0.6), rng.uniform(0.7, 0.95)])
    sky = Sky(horizon, zenith, clouds=rng.uniform(0.0, 0.7), seed=int(rng.integers(1 << 30)))
    return Scene(tuple(shapes), (Light(sun, rng.uniform(1.0, 1.6), directional=True),),
                 ambient=rng.uniform(0.25, 0.5), sky=sky, far=800.0, seed=int(rng.integers(1 << 30))), camera


def random_scene(rng, kind="mixed"):
    """A random (Scene, Camera); kind: "indoor", "outdoor" or "mixed" (each with probability 1/2)."""
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {KINDS}")
    if kind == "mixed":
        kind = "indoor" if rng.random() < 0.5 else "outdoor"
    return indoor(rng) if kind == "indoor" else outdoor(rng)
