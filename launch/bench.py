"""Time JAX against the PyTorch originals on this machine, in one run.

    python launch/bench.py dav2 --encoder vits --size 518 [--attention auto] [--repeats 5]
    python launch/bench.py marigold

DAv2: the official `DepthAnythingV2.forward` (PyTorch, random weights) against our jitted forward on the same
size×size input, then the official `infer_image` against the public `dav2_jax.infer_image` (pre- and
post-processing included, default attention) on a real 400×600 photo (scikit-image's coffee); median of
`--repeats` warm runs each (JAX after compilation). The instruction set XLA may use is printed: run once as is and
once with `XLA_FLAGS=--xla_cpu_max_isa=AVX2` to measure both.
"""

import argparse
import os
import statistics
import sys
import time


def _median_seconds(fn, repeats):
    fn()  # warm-up (JAX: compilation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def instruction_set():
    """The widest x86 vector extension XLA:CPU may use here: the CPU's, capped by `--xla_cpu_max_isa`."""
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    cpu = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "below AVX2"
    for option in os.environ.get("XLA_FLAGS", "").split():
        if option.startswith("--xla_cpu_max_isa="):
            return f"{option.split('=', 1)[1]} (capped by XLA_FLAGS; the CPU has {cpu})"
    return cpu


def bench_dav2(argv):
    p = argparse.ArgumentParser(prog="bench.py dav2")
    p.add_argument("--encoder", default="vits", choices=["vits", "vitb", "vitl", "vitg"])
    p.add_argument("--size", type=int, default=518, help="square input side (multiple of 14)")
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "heads_first"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from skimage import data

    import dav2_jax
    from dav2_jax import convert_official
    from dav2_jax.checkpoints import param_template
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from oracles import official_model  # the official code needs the tests' torchvision stand-in

    ref = official_model(args.encoder)
    model = dav2_jax.DepthAnythingV2(args.encoder, attention_impl=args.attention)
    params = convert_official.from_state_dict({k: v.numpy() for k, v in ref.state_dict().items()},
                                              param_template(model))
    x = np.random.RandomState(0).randn(1, args.size, args.size, 3).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    xj = jnp.asarray(x)
    forward = jax.jit(model.apply)

    def run_torch():
        with torch.inference_mode():
            return ref(xt)

    t_torch = _median_seconds(run_torch, args.repeats)
    t_jax = _median_seconds(lambda: forward(params, xj).block_until_ready(), args.repeats)
    err = float(np.abs(np.asarray(forward(params, xj)) - run_torch().numpy()).max())
    print(f"DAv2-{args.encoder[3:].upper()} {args.size}x{args.size}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), jax {jax.__version__} on {jax.default_backend()}, "
          f"instruction set {instruction_set()}, attention={args.attention}; max |diff| {err:.2e}")
    print(f"PyTorch forward: {t_torch:.3f} s")
    print(f"JAX forward:     {t_jax:.3f} s")
    print(f"speed-up JAX/PyTorch: {t_torch / t_jax:.2f}x")

    photo = data.coffee()  # uint8 RGB [400, 600, 3]
    default_model = dav2_jax.DepthAnythingV2(args.encoder)

    def run_torch_photo():
        return ref.infer_image(np.ascontiguousarray(photo[..., ::-1]), args.size)

    t_torch = _median_seconds(run_torch_photo, args.repeats)
    t_jax = _median_seconds(lambda: dav2_jax.infer_image(default_model, params, photo, args.size), args.repeats)
    err = float(np.abs(dav2_jax.infer_image(default_model, params, photo, args.size) - run_torch_photo()).max())
    print(f"infer_image on a {photo.shape[0]}x{photo.shape[1]} photo at input size {args.size} "
          f"(public API defaults); max |diff| {err:.2e}")
    print(f"PyTorch infer_image: {t_torch:.3f} s")
    print(f"JAX infer_image:     {t_jax:.3f} s")
    print(f"speed-up JAX/PyTorch: {t_torch / t_jax:.2f}x")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("dav2", "marigold"):
        print(__doc__)
        return 2
    if argv[0] == "dav2":
        bench_dav2(argv[1:])
    else:
        from launch import bench_marigold

        bench_marigold.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
