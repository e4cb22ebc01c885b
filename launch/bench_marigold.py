"""Marigold: time JAX against diffusers (PyTorch) on this machine, in one run, with the real model sizes.

    python launch/bench.py marigold [--parts unet,vae,pipeline] [--repeats 3] [--pipeline-repeats 1]
                                    [--attention auto] [--workdir DIR]

One random-weight Marigold depth checkpoint with the real architecture (SD2 U-Net with 8 input channels, SD VAE;
the text encoder cut to one layer, since both sides encode the empty prompt once and cache it) is written as a
diffusers folder, then each measurement runs in its own Python process, PyTorch and JAX alternately, so that
neither framework's memory or threads affect the other:
- `unet`: one U-Net step at a 64x64 latent (a 512x512 image), batch 1;
- `vae`: VAE encode of a 512x512 image (posterior mean) and decode of a 64x64 latent;
- `pipeline`: the whole 4-step depth pipeline at processing resolution 768 on scikit-image's coffee photo
  (400x600 -> 512x768), same initial noise on both sides.
Times are medians of warm runs (JAX after compilation). Memory is the peak resident set size sampled every 5 ms
during those runs (parameters included), per process. Ratios PyTorch/JAX are printed last.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

SD2_UNET = dict(
    in_channels=8,  # Marigold depth/normals: image latent + noisy target latent
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    norm_num_groups=32,
    use_linear_projection=True,
    upcast_attention=True,
)
SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    latent_channels=4,
)
MARIGOLD_V1_1_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=False, steps_offset=1,
    timestep_spacing="trailing",
)
PIPELINE_STEPS = 4
PIPELINE_RESOLUTION = 768


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench.py marigold", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="unet,vae,pipeline", help="comma-separated subset of unet,vae,pipeline")
    p.add_argument("--repeats", type=int, default=3, help="warm runs per U-Net/VAE measurement")
    p.add_argument("--pipeline-repeats", type=int, default=1, help="warm runs of the whole pipeline")
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "heads_first"], help="JAX attention kernel")
    p.add_argument("--workdir", default=None, help="keep the checkpoint and outputs here (default: a temp dir)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


class _PeakRss:
    """Peak resident set size (bytes) of this process while the context is open, sampled every 5 ms."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        page = os.sysconf("SC_PAGE_SIZE")

        def sample():
            while not self._stop.is_set():
                with open("/proc/self/statm") as f:
                    self.peak = max(self.peak, int(f.read().split()[1]) * page)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _measure(fn, repeats):
    """Warm up once, then time `repeats` runs; returns (median seconds, peak RSS bytes, last output)."""
    out = fn()
    times = []
    with _PeakRss() as rss:
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times), rss.peak, out


def _inputs():
    rng = np.random.default_rng(0)
    return dict(
        unet_sample=rng.standard_normal((1, 64, 64, 8), dtype=np.float32),
        text=rng.standard_normal((1, 2, 1024), dtype=np.float32),
        image=rng.uniform(-1, 1, (1, 512, 512, 3)).astype(np.float32),
        latent=rng.standard_normal((1, 64, 64, 4), dtype=np.float32),
        pipeline_noise=rng.standard_normal((1, 64, 96, 4), dtype=np.float32),
    )


def _coffee():
    import skimage.data

    return skimage.data.coffee()


def prepare(folder):
    """Write the random-weight, real-size Marigold depth checkpoint (diffusers folder)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=6, hidden_size=1024, intermediate_size=4096, num_hidden_layers=1, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    pipe = MarigoldDepthPipeline(
        unet=UNet2DConditionModel(**SD2_UNET).eval(),
        vae=AutoencoderKL(**SD_VAE).eval(),
        scheduler=DDIMScheduler(**MARIGOLD_V1_1_SCHEDULER),
        text_encoder=text_encoder.eval(),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77),
        prediction_type="depth",
        default_denoising_steps=PIPELINE_STEPS,
        default_processing_resolution=PIPELINE_RESOLUTION,
    )
    pipe.save_pretrained(folder)


def torch_worker(part, folder, repeats, out_dir):
    import torch
    from diffusers import AutoencoderKL, MarigoldDepthPipeline, UNet2DConditionModel

    x = _inputs()
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    results = {}
    with torch.inference_mode():
        if part == "unet":
            unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).eval()
            sample, text = nchw(x["unet_sample"]), torch.from_numpy(x["text"])
            step = lambda: unet(sample, torch.tensor(999), encoder_hidden_states=text).sample
            results["unet step"] = _measure(step, repeats)
        elif part == "vae":
            vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae")).eval()
            image, latent = nchw(x["image"]), nchw(x["latent"])
            results["vae encode"] = _measure(lambda: vae.encode(image).latent_dist.mode(), repeats)
            results["vae decode"] = _measure(lambda: vae.decode(latent).sample, repeats)
        else:
            from PIL import Image

            pipe = MarigoldDepthPipeline.from_pretrained(folder)
            pipe.set_progress_bar_config(disable=True)
            image, noise = Image.fromarray(_coffee()), nchw(x["pipeline_noise"])
            run = lambda: pipe(image, num_inference_steps=PIPELINE_STEPS, processing_resolution=PIPELINE_RESOLUTION,
                               latents=noise).prediction
            results["depth pipeline"] = _measure(run, repeats)
    return _report("torch", results, out_dir, lambda o: o.numpy().transpose(0, 2, 3, 1) if hasattr(o, "numpy") else o)


def _jax_component(folder, component, module_cls, attention):
    """One network of the folder (module, params), loaded alone as the PyTorch side loads it."""
    from marigold_jax.convert_diffusers import params_from_torch, read_safetensors

    with open(os.path.join(folder, component, "config.json")) as f:
        module = module_cls.from_config(json.load(f), attention_impl=attention)
    weights = read_safetensors(os.path.join(folder, component, "diffusion_pytorch_model.safetensors"))
    return module, params_from_torch(module, weights, component)


def jax_worker(part, folder, repeats, out_dir, attention):
    import jax.numpy as jnp

    import marigold_jax
    from marigold_jax.compilation import jit
    from marigold_jax.unet import UNet2DConditionModel
    from marigold_jax.vae import AutoencoderKL

    x = _inputs()
    results = {}
    if part == "unet":
        unet, params = _jax_component(folder, "unet", UNet2DConditionModel, attention)
        step = jit(lambda p, s, t: unet.apply(p, s, 999, t))
        sample, text = jnp.asarray(x["unet_sample"]), jnp.asarray(x["text"])
        results["unet step"] = _measure(lambda: step(params, sample, text).block_until_ready(), repeats)
    elif part == "vae":
        vae, params = _jax_component(folder, "vae", AutoencoderKL, attention)
        encode = jit(lambda p, i: vae.apply(p, i, method=AutoencoderKL.encode_mean))
        decode = jit(lambda p, z: vae.apply(p, z, method=AutoencoderKL.decode))
        image, latent = jnp.asarray(x["image"]), jnp.asarray(x["latent"])
        results["vae encode"] = _measure(lambda: encode(params, image).block_until_ready(), repeats)
        results["vae decode"] = _measure(lambda: decode(params, latent).block_until_ready(), repeats)
    else:
        pipeline = marigold_jax.load(folder, attention_impl=attention)
        image = _coffee()
        run = lambda: pipeline.predict_depth(image, num_inference_steps=PIPELINE_STEPS,
                                             processing_resolution=PIPELINE_RESOLUTION,
                                             latents=x["pipeline_noise"]).prediction
        results["depth pipeline"] = _measure(run, repeats)
    return _report("jax", results, out_dir, np.asarray)


def _report(framework, results, out_dir, to_nhwc):
    """Save outputs for the comparison and print one JSON line of {name: [seconds, peak RSS]}."""
    summary = {}
    for name, (seconds, peak, out) in results.items():
        np.save(os.path.join(out_dir, f"{framework}-{name.replace(' ', '_')}.npy"), to_nhwc(out))
        summary[name] = [seconds, peak]
    summary["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(summary))


def _spawn(worker, part, folder, args, out_dir):
    cmd = [sys.executable, "-m", "launch.bench_marigold", "--worker", worker, "--part", part, "--workdir", folder,
           "--repeats", str(args.pipeline_repeats if part == "pipeline" else args.repeats),
           "--attention", args.attention]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "BENCH_OUT": out_dir})
    if run.returncode != 0:
        raise SystemExit(f"{worker} {part} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker == "prepare":
        return prepare(args.workdir)
    if args.worker == "torch":
        return torch_worker(args.part, args.workdir, args.repeats, os.environ["BENCH_OUT"])
    if args.worker == "jax":
        return jax_worker(args.part, args.workdir, args.repeats, os.environ["BENCH_OUT"], args.attention)

    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - {"unet", "vae", "pipeline"})
    if unknown:
        raise SystemExit(f"unknown --parts {unknown}; choose from unet, vae, pipeline")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_marigold_")
    folder, out_dir = os.path.join(workdir, "marigold-depth-random"), os.path.join(workdir, "outputs")
    os.makedirs(out_dir, exist_ok=True)
    try:
        if not os.path.isfile(os.path.join(folder, "model_index.json")):
            print(f"writing a random-weight, real-size Marigold depth checkpoint to {folder} ...", flush=True)
            run = subprocess.run([sys.executable, "-m", "launch.bench_marigold", "--worker", "prepare", "--workdir",
                                  folder], capture_output=True, text=True, check=False)
            if run.returncode != 0:
                raise SystemExit(f"writing the checkpoint failed:\n{run.stderr[-4000:]}")
        rows = []
        for part in parts:
            for worker in ("torch", "jax"):
                print(f"timing {worker} {part} ...", flush=True)
                for name, value in _spawn(worker, part, folder, args, out_dir).items():
                    if name != "max_rss":
                        rows.append((name, worker, *value))
        _print_table(rows, out_dir, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _print_table(rows, out_dir, args):
    import jax
    import torch

    by = {(name, worker): (t, m) for name, worker, t, m in rows}
    print(f"\nMarigold, float32, batch 1; torch {torch.__version__} ({torch.get_num_threads()} threads), jax "
          f"{jax.__version__} on {jax.default_backend()} ({os.cpu_count()} cores), JAX attention={args.attention}")
    print(f"{'':16} {'PyTorch s':>10} {'JAX s':>8} {'PyTorch GiB':>12} {'JAX GiB':>8} {'max |diff|':>11}")
    ratios = []
    for name in dict.fromkeys(name for name, _, _, _ in rows):
        (tt, mt), (tj, mj) = by[(name, "torch")], by[(name, "jax")]
        stem = name.replace(" ", "_")
        a, b = np.load(os.path.join(out_dir, f"torch-{stem}.npy")), np.load(os.path.join(out_dir, f"jax-{stem}.npy"))
        print(f"{name:16} {tt:10.2f} {tj:8.2f} {mt / 2**30:12.2f} {mj / 2**30:8.2f} {np.abs(a - b).max():11.2e}")
        ratios.append(f"{name}: {tt / tj:.2f}x faster, {mt / mj:.2f}x less memory")
    print("JAX vs PyTorch: " + "; ".join(ratios))


if __name__ == "__main__":
    sys.exit(main())
