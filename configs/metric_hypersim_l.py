"""Metric-depth fine-tuning as the released `metric_depth/` code does it: ViT-L on Hypersim, 20 m (indoor).

    python launch/train.py --config configs/metric_hypersim_l.py --workdir DIR \\
        --config.model.encoder_from=depth_anything_v2_vitl.pth --config.data.sources.hypersim.root=/data/hypersim

Released recipe (dist_train.sh / train.py): 8 GPUs x batch 4 = 32, 120 epochs, AdamW (0.9, 0.999, weight decay
0.01), lr 5e-6 for the encoder and 10x for the DPT head, poly decay (1 - it/total)^0.9 per iteration without
warm-up, 518 x 518 crops, SiLog with lambda 0.5 on ground truth within [0.001, max_depth], encoder from the
relative checkpoint and a fresh head. total_steps = 120 epochs of the training list at batch 32: here 120 x 60,000
/ 32 (Hypersim's ~60K images of Table 7); set it from the size of your copy of the list.
"""

import runpy
from pathlib import Path

import ml_collections

EPOCHS = 120
TRAIN_IMAGES = 60_000  # Hypersim images (paper Table 7); the released train list may differ slightly


def get_config(encoder="vitl", dataset="hypersim", max_depth=20.0, train_images=TRAIN_IMAGES):
    c = runpy.run_path(str(Path(__file__).with_name("teacher_g.py")))["get_config"]()
    c.task = "dav2_metric"
    c.batch_size = 32
    c.total_steps = EPOCHS * train_images // 32
    c.eval_every = 2_000

    c.sharding = "dp"
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.model = ml_collections.ConfigDict()
    c.model.encoder = encoder  # "vits" | "vitb" | "vitl"
    c.model.max_depth = max_depth  # metres: the head is sigmoid x max_depth (20 indoor, 80 outdoor)
    c.model.min_depth = 1e-3  # metres: nearer ground truth is left out of the loss
    c.model.silog_lambda = 0.5  # SiLog: sqrt(mean(g^2) - lambda mean(g)^2), as released
    c.model.crop = 518  # training crop side (multiple of 14)
    c.model.dtype = "bfloat16"  # compute dtype; parameters stay float32
    c.model.attention_impl = "auto"  # "auto" | "xla" | "heads_first"
    c.model.remat = encoder == "vitl"  # rematerialise each block of ViT-L in the backward pass
    c.model.encoder_from = ""  # relative Depth Anything V2 checkpoint / run for the encoder (head fresh)
    c.model.init_from = ""  # or a Depth Anything V2 checkpoint for every weight

    c.optimizer.lr = ml_collections.ConfigDict(dict(encoder=5e-6, decoder=5e-5))  # decoder at 10x
    c.optimizer.weight_decay = 0.01
    c.schedule.kind = "poly"
    c.schedule.power = 0.9
    c.schedule.warmup_steps = 0

    c.data.sources = ml_collections.ConfigDict({dataset: dict(reader=dataset, root=f"/data/{dataset}", weight=1.0)})
    # held-out: procedural scenes with exact metric depth, scored without alignment (eval/abs_rel in metres)
    c.eval.max_depth = max_depth
    return c
