"""Marigold inference pipelines (depth, surface normals, intrinsic image decomposition), equal to diffusers'.

`load(path)` reads a diffusers Marigold folder (no torch needed) into a `MarigoldPipeline`; its `predict_depth`,
`predict_normals` and `predict_intrinsics` take RGB uint8 images and diffusers' knobs and return what diffusers
returns for `output_type="np"`. Per call: preprocessing (`image_processing`), image encoding and the jitted
denoising loop (`sampling`), unpadding, ensembling on the host (`ensemble`), resizing back to the input size.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from marigold_jax import ensemble, image_processing, run_folder, runs, sampling, schedulers
from marigold_jax.convert_diffusers import MarigoldFolder, load_folder, save_folder
from marigold_jax.unet import UNet2DConditionModel
from marigold_jax.vae import AutoencoderKL

_ENSEMBLING_OPTIONS = {
    "depth": ("reduction", "regularizer_strength", "max_iter", "tol", "max_res"),
    "normals": ("reduction",),
    "intrinsics": ("reduction",),
}
_PIPELINE_CLASSES = {
    "MarigoldDepthPipeline": "depth",
    "MarigoldNormalsPipeline": "normals",
    "MarigoldIntrinsicsPipeline": "intrinsics",
}
_PREDICTION_TYPES = {"depth": "depth", "disparity": "depth", "normals": "normals", "intrinsics": "intrinsics"}


@dataclasses.dataclass(frozen=True)
class MarigoldOutput:
    """What diffusers returns for `output_type="np"`.

    prediction: float32 [N, H, W, 1] depth in [0, 1], [N, H, W, 3] unit normals, or [N * T, H, W, 3] intrinsics in
    [0, 1] (image-major, then the T targets in `MarigoldPipeline.target_names` order).
    uncertainty: same layout ([N, H, W, 1] for normals), or None unless `output_uncertainty` with an ensemble.
    latent: the final target latents [N * ensemble_size, h, w, 4 * T] (NHWC) when `output_latent`, else None.
    """

    prediction: np.ndarray
    uncertainty: np.ndarray | None = None
    latent: np.ndarray | None = None


def detect_modality(model_index: dict, unet_config: dict, latent_channels: int = 4) -> str:
    """'depth', 'normals' or 'intrinsics' from a folder's `model_index.json` and `unet/config.json`.

    Decided by the pipeline class name, else its `prediction_type`, else `target_properties` or a U-Net predicting
    several targets (intrinsics), else the legacy `MarigoldPipeline` class (depth).
    """
    name = model_index.get("_class_name", "")
    if name in _PIPELINE_CLASSES:
        return _PIPELINE_CLASSES[name]
    if model_index.get("prediction_type") in _PREDICTION_TYPES:
        return _PREDICTION_TYPES[model_index["prediction_type"]]
    if "target_properties" in model_index or unet_config.get("out_channels", latent_channels) > latent_channels:
        return "intrinsics"
    if name == "MarigoldPipeline":
        return "depth"
    raise ValueError(
        f"expected a Marigold checkpoint (model_index.json `_class_name` one of {sorted(_PIPELINE_CLASSES)}), "
        f"found {name or 'no _class_name'!r}; download a prs-eth/marigold-* diffusers folder"
    )


@dataclasses.dataclass
class MarigoldPipeline:
    """A loaded Marigold checkpoint (`folder`: modules, float32 parameters, configs, empty-prompt embedding), its
    task (`modality`: 'depth', 'normals' or 'intrinsics') and sampler config.

    To predict with other weights (e.g. fine-tuned), replace them in the folder:
    `dataclasses.replace(pipeline, folder=dataclasses.replace(pipeline.folder, unet_params=new))`.
    """

    folder: MarigoldFolder
    modality: str
    scheduler: schedulers.SchedulerConfig
    batch_sharding: NamedSharding | None = None  # set by `replicate`: members are split over its batch axis

    @property
    def unet(self) -> UNet2DConditionModel:
        return self.folder.unet

    @property
    def vae(self) -> AutoencoderKL:
        return self.folder.vae

    @property
    def model_index(self) -> dict:
        """The folder's model_index.json: prediction type, default steps/resolution, invariances, targets."""
        return self.folder.model_index

    @property
    def n_targets(self) -> int:
        """Number of predicted targets T (latents per member): 1 for depth and normals."""
        return self.unet.out_channels // self.vae.latent_channels

    @property
    def target_names(self) -> list[str]:
        """Names of the predicted targets, in output order (from `target_properties`; the modality otherwise)."""
        names = (self.model_index.get("target_properties") or {}).get("target_names")
        return list(names) if names else [self.modality] * self.n_targets

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)

    def replicate(self, mesh: Mesh, batch_axis: str | tuple[str, ...] = "data") -> "MarigoldPipeline":
        """A copy with parameters replicated over `mesh` and ensemble members sharded over `batch_axis`."""
        replicated = NamedSharding(mesh, PartitionSpec())
        folder = dataclasses.replace(
            self.folder,
            unet_params=jax.device_put(self.folder.unet_params, replicated),
            vae_params=jax.device_put(self.folder.vae_params, replicated),
        )
        return dataclasses.replace(self, folder=folder, batch_sharding=NamedSharding(mesh, PartitionSpec(batch_axis)))

    def predict_depth(self, image, **kwargs) -> MarigoldOutput:
        """Depth (affine-invariant, [0, 1]) of RGB uint8 `image` [H, W, 3] or [N, H, W, 3]; see `predict`."""
        return self.predict(image, expect="depth", **kwargs)

    def predict_normals(self, image, **kwargs) -> MarigoldOutput:
        """Unit surface normals of RGB uint8 `image` [H, W, 3] or [N, H, W, 3]; see `predict`."""
        return self.predict(image, expect="normals", **kwargs)

    def predict_intrinsics(self, image, **kwargs) -> MarigoldOutput:
        """Intrinsic decomposition ([N * T, H, W, 3], targets `target_names`) of RGB uint8 images; see `predict`."""
        return self.predict(image, expect="intrinsics", **kwargs)

    def predict(
        self,
        image,
        num_inference_steps: int | None = None,
        ensemble_size: int = 1,
        processing_resolution: int | None = None,
        match_input_resolution: bool = True,
        resample_method_input: str = "bilinear",
        resample_method_output: str = "bilinear",
        batch_size: int = 1,
        ensembling_kwargs: dict | None = None,
        latents: np.ndarray | None = None,
        seed: int = 0,
        output_uncertainty: bool = False,
        output_latent: bool = False,
        expect: str | None = None,
    ) -> MarigoldOutput:
        """Run the checkpoint's task on RGB uint8 images, with the knobs of diffusers' Marigold pipelines.

        num_inference_steps / processing_resolution: None uses the checkpoint's defaults; resolution 0 is native,
        else the long side in pixels (a multiple of 8). `latents` NHWC [N * ensemble_size, h, w, 4 * T] replaces
        the initial noise drawn from `seed` by numpy's default generator (diffusers' NCHW latents transposed give
        the same result).
        `batch_size` members are denoised at once. `expect` names the modality the caller wants.
        """
        if expect is not None and expect != self.modality:
            raise ValueError(
                f"this is a Marigold {self.modality} checkpoint; call predict_{self.modality}, not predict_{expect}"
            )
        images = image_processing.check_rgb_uint8(image)
        steps, resolution = num_inference_steps, processing_resolution
        if steps is None:
            steps = self.model_index.get("default_denoising_steps")
        if resolution is None:
            resolution = self.model_index.get("default_processing_resolution")
        kwargs = self._check_knobs(
            steps, ensemble_size, resolution, resample_method_input, resample_method_output, batch_size,
            ensembling_kwargs, output_uncertainty,
        )
        n, height, width, _ = images.shape
        x, padding = image_processing.preprocess(images, resolution, resample_method_input, self.vae_scale_factor)
        f = self.vae_scale_factor
        noise = self._initial_noise(latents, (n * ensemble_size, x.shape[1] // f, x.shape[2] // f), seed)
        image_latent = jnp.repeat(self._encode(x, batch_size), ensemble_size, axis=0)
        latent = self._denoise(image_latent, noise, steps, batch_size, seed)
        members = self._decode(latent, batch_size)
        members = np.asarray(image_processing.unpad(members.reshape(-1, *members.shape[2:]), padding))
        members = members.reshape(n * ensemble_size, self.n_targets, *members.shape[1:])
        prediction, uncertainty = self._ensemble(members, n, ensemble_size, output_uncertainty, kwargs)
        if match_input_resolution:
            prediction = self._resize_back(prediction, (height, width), resample_method_output)
            if uncertainty is not None:
                uncertainty = np.asarray(
                    image_processing.resize(uncertainty, (height, width), resample_method_output)
                )
        return MarigoldOutput(
            prediction=np.asarray(prediction, np.float32),
            uncertainty=None if uncertainty is None else np.asarray(uncertainty, np.float32),
            latent=np.asarray(latent) if output_latent else None,
        )

    def _check_knobs(
        self, steps, ensemble_size, resolution, method_in, method_out, batch_size, ensembling_kwargs, uncertainty
    ) -> dict:
        if steps is None:
            raise ValueError("num_inference_steps is not set and the checkpoint has no default_denoising_steps")
        if steps < 1:
            raise ValueError(f"expected num_inference_steps >= 1, got {steps}")
        if ensemble_size < 1:
            raise ValueError(f"expected ensemble_size >= 1, got {ensemble_size}")
        if uncertainty and ensemble_size == 1:
            raise ValueError("output_uncertainty needs ensemble_size > 1 (it measures disagreement of the members)")
        if resolution is None:
            raise ValueError("processing_resolution is not set and the checkpoint has no default_processing_resolution")
        if resolution < 0 or resolution % self.vae_scale_factor:
            raise ValueError(
                f"expected processing_resolution 0 (native) or a positive multiple of {self.vae_scale_factor}, "
                f"got {resolution}"
            )
        for name, method in (("resample_method_input", method_in), ("resample_method_output", method_out)):
            if method not in image_processing.RESAMPLE_METHODS:
                raise ValueError(f"expected {name} in {image_processing.RESAMPLE_METHODS}, got {method!r}")
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        kwargs = dict(ensembling_kwargs or {})
        unknown = sorted(set(kwargs) - set(_ENSEMBLING_OPTIONS[self.modality]))
        if unknown:
            raise ValueError(
                f"unknown ensembling_kwargs {unknown} for {self.modality}; expected some of "
                f"{list(_ENSEMBLING_OPTIONS[self.modality])}"
            )
        return kwargs

    def _chunks(self, total: int, batch_size: int):
        """(start, stop, padded size) of batches of at most `batch_size`, padded to a multiple of the devices."""
        size = min(batch_size, total)
        if self.batch_sharding is not None:
            devices = self.batch_sharding.mesh.size
            size = -(-size // devices) * devices
        return [(i, min(i + size, total), size) for i in range(0, total, size)]

    def _place(self, x: jnp.ndarray, size: int) -> jnp.ndarray:
        if x.shape[0] < size:
            x = jnp.concatenate([x, jnp.zeros((size - x.shape[0], *x.shape[1:]), x.dtype)])
        return x if self.batch_sharding is None else jax.device_put(x, self.batch_sharding)

    def _encode(self, images: jnp.ndarray, batch_size: int) -> jnp.ndarray:
        out = []
        for start, stop, size in self._chunks(images.shape[0], batch_size):
            latent = sampling.encode(self.vae, self.folder.vae_params, self._place(images[start:stop], size))
            out.append(latent[: stop - start])
        return jnp.concatenate(out)

    def _initial_noise(self, latents, size: tuple[int, int, int], seed: int) -> jnp.ndarray:
        """Initial target latents [M, h, w, 4T] for `size` = (M, h, w): `latents` checked, or drawn from `seed`."""
        shape = (*size, self.vae.latent_channels * self.n_targets)
        if latents is None:
            return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))
        latents = np.asarray(latents)
        if latents.shape != shape:
            raise ValueError(
                f"expected latents of shape [N * ensemble_size, h, w, 4 * T] = {list(shape)} (NHWC), got "
                f"{list(latents.shape)}; diffusers' NCHW latents are transposed with .transpose(0, 2, 3, 1)"
            )
        return jnp.asarray(latents, jnp.float32)

    def _denoise(self, image_latent, noise, steps: int, batch_size: int, seed: int) -> jnp.ndarray:
        """Denoise all members [M, h, w, 4] from `noise` [M, h, w, 4T] in batches: final latents [M, h, w, 4T]."""
        sampler, consts = schedulers.make_plan(self.scheduler, steps, pad_to=schedulers.max_steps(self.scheduler))
        text = jnp.asarray(self.folder.empty_text_embedding, jnp.float32)
        key = jax.random.fold_in(jax.random.key(seed), 1)
        out = []
        for start, stop, size in self._chunks(image_latent.shape[0], batch_size):
            latent = sampling.denoise(
                self.unet,
                self.folder.unet_params,
                sampler,
                consts,
                jnp.int32(steps),
                self._place(image_latent[start:stop], size),
                self._place(noise[start:stop], size),
                text,
                jax.random.fold_in(key, start),
            )
            out.append(latent[: stop - start])
        return jnp.concatenate(out)

    def _decode(self, latent: jnp.ndarray, batch_size: int) -> jnp.ndarray:
        """Final latents [M, h, w, 4T] -> predictions [M, T, H, W, C], decoded `batch_size` targets at a time."""
        targets = sampling.per_target(latent, self.vae.latent_channels)
        use_full_z_range = bool(self.model_index.get("use_full_z_range", True))
        out = []
        for start, stop, size in self._chunks(targets.shape[0], batch_size):
            decoded = sampling.decode(self.vae, self.folder.vae_params, self._place(targets[start:stop], size))
            out.append(sampling.postprocess(decoded[: stop - start], self.modality, use_full_z_range))
        prediction = jnp.concatenate(out)
        return prediction.reshape(latent.shape[0], self.n_targets, *prediction.shape[1:])

    def _ensemble(self, members: np.ndarray, n: int, e: int, output_uncertainty: bool, kwargs: dict):
        """members [N * E, T, h, w, C] -> (prediction, uncertainty or None) in the output layout."""
        if e == 1:
            return members.reshape(-1, *members.shape[2:]), None
        predictions, uncertainties = [], []
        for i in range(n):
            group = members[i * e : (i + 1) * e]
            if self.modality == "depth":
                p, u = ensemble.ensemble_depth(
                    group[:, 0],
                    bool(self.model_index.get("scale_invariant", True)),
                    bool(self.model_index.get("shift_invariant", True)),
                    output_uncertainty,
                    **kwargs,
                )
            elif self.modality == "normals":
                p, u = ensemble.ensemble_normals(group[:, 0], output_uncertainty, **kwargs)
            else:
                p, u = ensemble.ensemble_intrinsics(group, output_uncertainty, **kwargs)
            predictions.append(p)
            uncertainties.append(u)
        uncertainty = np.concatenate(uncertainties) if output_uncertainty else None
        return np.concatenate(predictions), uncertainty

    def _resize_back(self, prediction: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
        out = np.asarray(image_processing.resize(prediction, size, method))
        return ensemble.normalize_normals(out) if self.modality == "normals" else out


def load(path: str, dtype=jnp.float32, remat: bool = False, attention_impl: str = "auto",
         step: int | None = None) -> MarigoldPipeline:
    """Load a diffusers Marigold folder (depth, normals or intrinsics; no torch needed) or a Marigold training run
    directory (checkpoint `step`, the newest when None; its EMA weights when kept; see `run_folder`) as a
    `MarigoldPipeline`.

    `dtype` is the U-Net/VAE compute dtype (parameters stay float32); `attention_impl` "auto" (default:
    "heads_first" on the CPU backend, "xla" elsewhere), "xla" or "heads_first"; `remat` matters only for training.
    """
    options = dict(dtype=dtype, remat=remat, attention_impl=attention_impl)
    if runs.is_run_dir(path):
        folder = run_folder.folder_from_run(path, step, **options)
    elif step is not None:
        raise ValueError(f"step={step} applies to training run directories only; {path!r} is a diffusers folder")
    else:
        folder = load_folder(path, **options)
    modality = detect_modality(folder.model_index, folder.unet_config, folder.vae.latent_channels)
    return MarigoldPipeline(folder, modality, schedulers.SchedulerConfig.from_dict(folder.scheduler_config))


def save(pipeline: MarigoldPipeline, path: str) -> None:
    """Write `pipeline` as a diffusers folder that `diffusers.Marigold*Pipeline.from_pretrained(path)` loads."""
    scheduler_config = {**pipeline.folder.scheduler_config, **pipeline.scheduler.to_dict()}
    save_folder(dataclasses.replace(pipeline.folder, scheduler_config=scheduler_config), path)
