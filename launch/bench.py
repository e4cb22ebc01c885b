"""Time JAX against the PyTorch originals on this machine, in one run.

    python launch/bench.py dav2 --encoder vits --size 518 [--attention heads_first] [--repeats 5]
    python launch/bench.py marigold

DAv2: the official `DepthAnythingV2.forward` (PyTorch, random weights) against our jitted forward on the same
size×size input, median of `--repeats` warm runs each (JAX after compilation); the ratio is printed last.
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


def bench_dav2(argv):
    p = argparse.ArgumentParser(prog="bench.py dav2")
    p.add_argument("--encoder", default="vits", choices=["vits", "vitb", "vitl", "vitg"])
    p.add_argument("--size", type=int, default=518, help="square input side (multiple of 14)")
    p.add_argument("--attention", default="heads_first", choices=["xla", "heads_first"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

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
          f"attention={args.attention}; max |diff| {err:.2e}")
    print(f"PyTorch forward: {t_torch:.3f} s")
    print(f"JAX forward:     {t_jax:.3f} s")
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
