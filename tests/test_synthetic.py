"""The procedural synthetic scenes: determinism, exact geometry against closed forms, and image properties."""

import numpy as np
import pytest

from launch.data import raycast, scenes, synthetic
from launch.data.raycast import Camera, Light, Scene, Shape, look_at
from launch.data.sources import SyntheticScenes
from launch.data.textures import Material

CHECKER = Material("checker", np.array([[0.2, 0.3, 0.4], [0.8, 0.7, 0.6]]), 0.5)


def _rays(camera, height, width):
    """Independent pinhole rays: camera-space (x, y, 1) per pixel centre, and world directions [H, W, 3]."""
    f = 0.5 * width / np.tan(0.5 * camera.fov)
    jj, ii = np.meshgrid(np.arange(width), np.arange(height))
    d_cam = np.stack([(jj + 0.5 - width / 2) / f, (ii + 0.5 - height / 2) / f, np.ones((height, width))], -1)
    return d_cam, d_cam @ camera.rotation.T


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_generate_is_deterministic_per_seed_and_index():
    a = synthetic.generate(3, 5, 40, 56)
    b = synthetic.generate(3, 5, 40, 56)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image"], synthetic.generate(3, 6, 40, 56)["image"])
    assert not np.array_equal(a["image"], synthetic.generate(4, 5, 40, 56)["image"])


def test_depth_of_a_tilted_plane_equals_ray_plane_distance():
    rng = np.random.default_rng(0)
    rot = _random_rotation(rng)
    centre = np.array([0.3, -0.2, 4.0])
    cam = Camera(np.array([0.1, 0.2, -0.3]), look_at([0.1, 0.2, -0.3], [0.0, 0.0, 5.0], 0.2), np.radians(70))
    scene = Scene((Shape("plane", centre, np.array([np.inf, 0.0, np.inf]), (CHECKER,), rot),), ())
    out = raycast.render(scene, cam, 30, 44)
    d_cam, d = _rays(cam, 30, 44)
    normal = rot[:, 1]
    t = (normal @ (centre - cam.position)) / (d @ normal)  # planar depth, since d_cam has z = 1
    hit = t > 0
    np.testing.assert_array_equal(out["valid"], hit)
    np.testing.assert_allclose(out["depth"][hit], t[hit], rtol=1e-6)
    assert np.all(out["depth"][~hit] == 0)


def test_depth_and_normals_of_a_sphere_equal_the_closed_form():
    centre, radius = np.array([0.4, 1.1, 3.0]), 0.9
    cam = Camera(np.array([0.0, 1.5, -1.0]), look_at([0.0, 1.5, -1.0], centre + [0.3, 0.2, 0.0], -0.1),
                 np.radians(60))
    scene = Scene((Shape("ellipsoid", centre, np.full(3, radius), (CHECKER,)),), ())
    out = raycast.render(scene, cam, 36, 48)
    _, d = _rays(cam, 36, 48)
    oc = centre - cam.position
    a, b, c = np.sum(d * d, -1), d @ oc, oc @ oc - radius**2
    disc = b * b - a * c
    t = (b - np.sqrt(np.maximum(disc, 0))) / a
    hit = disc > 0
    clear = np.abs(disc) > 1e-6 * b.max() ** 2  # pixels not grazing the silhouette
    assert hit.sum() > 100 and (~hit).sum() > 100
    np.testing.assert_array_equal(out["valid"][clear], hit[clear])
    np.testing.assert_allclose(out["depth"][hit & clear], t[hit & clear], rtol=1e-6)
    assert np.all(out["depth"][~out["valid"]] == 0)
    n_world = (cam.position + t[..., None] * d - centre) / radius
    n_cam = n_world @ cam.rotation * np.array([1.0, -1.0, -1.0])  # Marigold frame: x right, y up, z to viewer
    np.testing.assert_allclose(out["normals"][hit & clear], n_cam[hit & clear], atol=1e-5)


def test_normals_are_unit_length_and_face_the_camera_in_random_scenes():
    for index, kind in [(0, "indoor"), (1, "indoor"), (2, "outdoor"), (3, "outdoor")]:
        s = synthetic.generate(11, index, 48, 64, kind)
        rng = np.random.default_rng([11, index])
        _, cam = scenes.random_scene(rng, kind)
        d_cam, _ = _rays(cam, 48, 64)
        view = d_cam * np.array([1.0, -1.0, -1.0])  # viewing rays in the Marigold frame
        v, n = s["valid"], s["normals"]
        np.testing.assert_allclose(np.linalg.norm(n[v], axis=-1), 1.0, atol=1e-5)
        assert np.all(np.sum(n[v] * view[v], axis=-1) <= 1e-6)
        assert np.all(n[~v] == 0)


def test_valid_mask_is_false_exactly_where_no_surface_is_hit():
    for index in range(4):
        s = synthetic.generate(5, index, 40, 56, "outdoor")
        v = s["valid"]
        np.testing.assert_array_equal(v, s["depth"] > 0)
        assert np.all(s["albedo"][~v] == 0) and np.all(s["shading"][~v] == 0)
    indoor = synthetic.generate(5, 0, 40, 56, "indoor")
    assert indoor["valid"].all()  # a closed room: every ray hits a wall, the floor, the ceiling or furniture


def test_cast_shadow_under_a_box_equals_the_ambient_term():
    ambient, sun = 0.3, 1.2
    box_centre, half = np.array([0.0, 0.6, 4.0]), np.array([0.5, 0.1, 0.4])
    scene = Scene((Shape("plane", np.zeros(3), np.array([np.inf, 0.0, np.inf]), (CHECKER,)),
                   Shape("box", box_centre, half, (CHECKER,))),
                  (Light(np.array([0.0, 1.0, 0.0]), sun, directional=True),), ambient=ambient)
    cam = Camera(np.array([0.0, 2.5, 0.0]), look_at([0.0, 2.5, 0.0], [0.0, 0.0, 4.5]), np.radians(60))
    out = raycast.render(scene, cam, 48, 64, exposure=False)
    _, d = _rays(cam, 48, 64)
    t_floor = -cam.position[1] / d[..., 1]
    floor_pt = cam.position + t_floor[..., None] * d
    on_floor = np.abs(out["depth"] - t_floor) < 1e-5
    inside = np.all(np.abs(floor_pt[..., [0, 2]] - box_centre[[0, 2]]) < half[[0, 2]] - 0.02, axis=-1)
    outside = np.any(np.abs(floor_pt[..., [0, 2]] - box_centre[[0, 2]]) > half[[0, 2]] + 0.02, axis=-1)
    assert (on_floor & inside).sum() > 20 and (on_floor & outside).sum() > 100
    np.testing.assert_allclose(out["shading"][on_floor & inside], ambient, rtol=1e-6)
    np.testing.assert_allclose(out["shading"][on_floor & outside], ambient + sun, rtol=1e-6)


def test_image_is_gamma_encoded_albedo_times_shading():
    s = synthetic.generate(2, 7, 40, 56)
    v = s["valid"]
    expected = np.clip(s["albedo"] * s["shading"][..., None], 0, 1) ** (1 / 2.2) * 255
    assert np.abs(s["image"][v].astype(float) - expected[v]).max() <= 0.51
    assert s["albedo"].min() >= 0 and s["albedo"].max() <= 1


@pytest.mark.parametrize("kind", ["indoor", "outdoor"])
def test_images_are_textured_not_flat(kind):
    for index in range(6):
        image = synthetic.generate(9, index, 64, 64, kind)["image"].reshape(-1, 3)
        assert image.astype(float).std() > 15.0
        assert len(np.unique(image, axis=0)) > 200


def test_synthetic_source_gives_the_sample_dict():
    src = SyntheticScenes(3, 24, 40, seed=1, kind="mixed")
    assert len(src) == 3
    item = src[2]
    assert item["name"] == "synthetic/mixed/1/2"
    assert item["image"].shape == (24, 40, 3) and item["image"].dtype == np.uint8
    assert item["depth"].shape == (24, 40) and item["depth"].dtype == np.float32
    assert item["valid"].dtype == bool
    assert item["normals"].shape == (24, 40, 3) and item["albedo"].shape == (24, 40, 3)
    assert item["shading"].shape == (24, 40)
    np.testing.assert_array_equal(item["depth"], synthetic.generate(1, 2, 24, 40)["depth"])
    with pytest.raises(IndexError):
        src[3]
    with pytest.raises(ValueError, match="unknown scene kind"):
        SyntheticScenes(3, 24, 40, seed=1, kind="underwater")
