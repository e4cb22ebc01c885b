"""Checkpoints → predictors: one call per RGB image, at the image's own resolution.

A predictor has `kind` ("disparity", "depth", "metric" or "normals": what its output means, see
`protocols`), `family` ("dav2" or "marigold": its default protocol), `settings` (dict, written to the results) and
`predict(rgb [H, W, 3] uint8) -> [H, W] float32` (or [H, W, 3] for normals).
"""

import os

import numpy as np

# Marigold's evaluation scripts (script/depth/eval/*_infer_*.sh, script/normals/eval/*_infer_*.sh): processing
# resolution per benchmark (0 = native) and seed; denoising steps default to the checkpoint's own
# (v1.1: the scripts' 1 for depth, 4 for normals; the v1.0 paper used 50: pass --steps 50)
MARIGOLD_PROCESSING_RESOLUTION = {
    "depth": {"eth3d": 756, "diode": 640},
    "normals": {"nyu": 640, "scannet": 640, "ibims": 640, "diode": 768},
}
MARIGOLD_SEED = 1234


class Dav2Predictor:
    """Depth Anything V2 through `dav2_jax.infer_image`: relative models give disparity, metric models metres."""

    family = "dav2"

    def __init__(self, path, input_size=518):
        import dav2_jax

        self.model, self.params = dav2_jax.load(path)
        self.input_size = input_size
        self.kind = "disparity" if self.model.max_depth is None else "metric"
        self.settings = {"encoder": self.model.encoder, "max_depth": self.model.max_depth, "input_size": input_size}

    def predict(self, rgb):
        import dav2_jax

        return np.asarray(dav2_jax.infer_image(self.model, self.params, rgb, input_size=self.input_size), np.float32)


class MarigoldPredictor:
    """A Marigold depth or normals pipeline through `marigold_jax.load` (a diffusers folder or a training run;
    affine-invariant depth in [0, 1] or unit normals), predicting at the input resolution
    (`match_input_resolution=True`)."""

    family = "marigold"

    def __init__(self, path, dataset_family, steps=None, ensemble=1, processing_resolution=None, seed=None):
        import marigold_jax

        self.pipeline = marigold_jax.load(path)
        task = self.task = self.pipeline.modality
        if task not in MARIGOLD_PROCESSING_RESOLUTION:
            raise ValueError(f"{path} is a Marigold {task} checkpoint: only depth and normals have benchmarks here")
        self.kind = task
        if processing_resolution is None:
            processing_resolution = MARIGOLD_PROCESSING_RESOLUTION[task].get(dataset_family, 0)
        if steps is None:
            steps = self.pipeline.model_index.get("default_denoising_steps")
        self.settings = {
            "num_inference_steps": steps,
            "ensemble_size": ensemble,
            "processing_resolution": processing_resolution,
            "seed": MARIGOLD_SEED if seed is None else seed,
        }

    def predict(self, rgb):
        run = self.pipeline.predict_depth if self.task == "depth" else self.pipeline.predict_normals
        out = run(rgb, match_input_resolution=True, **self.settings)
        prediction = np.asarray(out.prediction, np.float32)[0]
        return prediction[..., 0] if self.task == "depth" else prediction


def model_family(path):
    """"marigold" for a diffusers Marigold folder or a Marigold training run, else "dav2" (anything `dav2_jax.load`
    reads), without loading weights."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--model {path!r} does not exist: expected a Depth Anything V2 checkpoint (.pth, "
                                "transformers or dav2_jax folder), a Marigold diffusers folder or a training run")
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return "marigold"
    from marigold_jax.run_folder import is_marigold_run

    return "marigold" if is_marigold_run(path) else "dav2"


def load_predictor(path, dataset_family, input_size=518, steps=None, ensemble=1, processing_resolution=None,
                   seed=None):
    """The predictor for checkpoint `path`: a diffusers Marigold folder, else anything `dav2_jax.load` reads."""
    if model_family(path) == "marigold":
        return MarigoldPredictor(path, dataset_family, steps, ensemble, processing_resolution, seed)
    return Dav2Predictor(path, input_size)
