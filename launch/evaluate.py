"""Evaluate a Depth Anything V2 or Marigold checkpoint on a benchmark with the papers' protocols.

    python launch/evaluate.py --model PATH --dataset NAME --data-dir DIR [--protocol dav2|marigold]
                              [--output results.json] [--split FILE_OR_NAME] [--limit N]

Writes OUTPUT (JSON: run, summary, per-image results), OUTPUT with `.md` (Markdown table) and the resumable
per-image log OUTPUT with `.per_image.jsonl`; rerunning the same command continues where it stopped.
"""

import argparse
import json
import math
import os

from launch.eval import datasets, predictors, protocols, run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True,
                   help="DAv2 .pth / transformers / dav2_jax folder, Marigold folder, or a training run of either")
    p.add_argument("--dataset", required=True, choices=sorted(datasets.DATASETS))
    p.add_argument("--data-dir", help="the benchmark's files (not needed for motorcycle, optional for nyu_tfds)")
    p.add_argument("--protocol", choices=protocols.PROTOCOLS,
                   help="caps, crops and NYU depth of DAv2 (MiDaS) or Marigold; default: the model's family")
    p.add_argument("--output", help="results JSON (default: eval_DATASET_PROTOCOL.json)")
    p.add_argument("--split", help="split list file, or a split name the dataset knows (see docs/evaluation.md)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--input-size", type=int, default=518, help="DAv2: network input short side (multiple of 14)")
    p.add_argument("--steps", type=int, help="Marigold: denoising steps (default: 1 depth, 4 normals)")
    p.add_argument("--ensemble", type=int, default=1, help="Marigold: ensemble size")
    p.add_argument("--processing-resolution", type=int,
                   help="Marigold: processing resolution, 0 = native (default: Marigold's per-benchmark value)")
    p.add_argument("--seed", type=int, help="Marigold: noise seed (default 1234)")
    return p.parse_args(argv)


def _json_number(value):
    """Strict JSON has no infinity: an unbounded cap is written as the string "inf"."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def main(argv=None):
    args = parse_args(argv)
    protocol = args.protocol or predictors.model_family(args.model)
    reader = datasets.open_dataset(args.dataset, args.data_dir, args.split, protocol)
    predictor = predictors.load_predictor(args.model, reader.family, args.input_size, args.steps, args.ensemble,
                                          args.processing_resolution, args.seed)
    spec = protocols.depth_spec(protocol, reader.family) if reader.task == "depth" else None
    output = args.output or f"eval_{args.dataset}_{protocol}.json"
    stem = os.path.splitext(output)[0]
    identity = {
        "model": os.path.abspath(args.model), "kind": predictor.kind, "dataset": args.dataset,
        "split": args.split, "protocol": protocol, "settings": predictor.settings,
        "spec": None if spec is None else {k: _json_number(v) for k, v in vars(spec).items()},
    }
    records, summary = run.evaluate(predictor, reader, spec, identity, stem + ".per_image.jsonl", args.limit)
    report = run.markdown(identity, summary, records)
    with open(output, "w") as f:
        json.dump({"run": identity, "summary": summary, "per_image": records}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(report)
    print(report)
    print(f"wrote {output}, {stem}.md and {stem}.per_image.jsonl")
    return summary


if __name__ == "__main__":
    main()
