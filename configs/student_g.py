"""The Depth Anything V2 student of the paper (§5, Table 7) at ViT-G: pseudo-labelled real images only.

    python launch/pseudo_label.py --model TEACHER --input /data/sa1b --output /data/pseudo/sa1b    # once per set
    python launch/train.py --config configs/student_g.py --workdir DIR \\
        --config.model.dinov2_init=dinov2_vitg14_pretrain.pth \\
        --config.data.sources.sa1b.root=/data/pseudo/sa1b ...

Paper: batch 192, 480K iterations, Adam, lr 5e-6 (encoder) / 5e-5 (decoder), 518 x 518 random crops, L_ssi + 2 L_gm
on the teacher's pseudo disparity with the 10 % largest per-pixel losses of each image ignored, plus the feature
alignment to frozen DINOv2 (margin 0.85); the eight real sets concatenated without balancing. Not in the paper:
the alignment weight (1.0, see dav2_jax/student.py), and, as for the teacher, AdamW (weight decay 0.01) with poly
decay 0.9 and no warm-up from the released metric fine-tuning code.
"""

import runpy
from pathlib import Path

import ml_collections

# Images per pseudo-labelled set (paper Table 7, 62M in all): mixing by size is "concatenated without balancing".
PSEUDO_LABELED_SETS = {
    "bdd100k": 8_200_000,
    "google_landmarks": 4_100_000,
    "imagenet21k": 13_100_000,
    "lsun": 9_800_000,
    "objects365": 1_700_000,
    "open_images_v7": 7_800_000,
    "places365": 6_500_000,
    "sa1b": 11_100_000,
}


# Per size: (sharding, remat). S and B fit replicated; L and G (plus an equal frozen feature model: 0.7 B and 2.4 B
# parameters in all) are sharded with FSDP and keep only the blocks' matrix products for the backward pass ("dots",
# the lightest policy with which the teacher's ViT-G fits a v5p chip: docs/tpu.md). bfloat16 compute for all.
SIZES = {"vits": ("dp", False), "vitb": ("dp", False), "vitl": ("fsdp", "dots"), "vitg": ("fsdp", "dots")}


def get_config(encoder="vitg"):
    c = runpy.run_path(str(Path(__file__).with_name("teacher_g.py")))["get_config"]()
    c.task = "dav2_student"
    c.total_steps = 480_000
    c.batch_size = 192

    c.sharding, remat = SIZES[encoder]
    # FSDP over at most 8 devices, data parallel over the rest: XLA computes each FSDP product as a loop over the
    # weight shards, and over 32 shards a ViT-G shard is 48 rows, too few for the matrix unit. student_g on
    # v5p:4x4x2 (docs/tpu.md): FSDP 32 4.6 s per step (5 % MFU, compiler's estimate), data 4 x FSDP 8 0.95 s (24 %).
    c.mesh.data = -1
    c.mesh.fsdp = 1 if c.sharding == "dp" else 8
    c.mesh.tensor = 1

    c.model.encoder = encoder
    c.model.trim = 0.1  # pseudo labels are noisy: ignore each image's 10 % largest per-pixel losses
    c.model.dtype = "bfloat16"
    c.model.remat = remat
    c.model.encoder_from = ""  # or the encoder of a Depth Anything V2 checkpoint / run instead of DINOv2
    c.model.feature_weight = 1.0  # L = L_depth + feature_weight * L_feat (not in the paper; 0 turns it off)
    c.model.feature_margin = 0.85  # tokens whose cosine to DINOv2 is above this are left out (V1)
    c.model.feature_teacher = ""  # frozen feature model; "" = model.dinov2_init

    c.data.sources = ml_collections.ConfigDict({
        name: dict(reader="pseudo_labeled", root=f"/data/pseudo/{name}", weight=float(size))
        for name, size in PSEUDO_LABELED_SETS.items()
    })  # one launch/pseudo_label.py output folder per set
    return c
