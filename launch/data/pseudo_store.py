"""The on-disk store of pseudo labels: ArrayRecord shards, one JSON note per finished shard, and a manifest.

Layout of an output directory:

    settings.json                   what produced it (model, input size, flip, input, shard size, image list hash)
    shards/shard-00000.array_record records of images [0, S), S = shard size, in the collection's order
    shards/shard-00000.json         written last, after the shard is complete: its record count and skipped images
    manifest.json                   once every shard is done: the shards, their counts and every skipped image

A record is a msgpack map {"name": str, "image": the source's encoded bytes, "disparity": float16 [H, W]} (the
teacher's relative disparity at the image's own resolution). A shard counts as done only when its JSON note
exists; both files are written under a temporary name and renamed, so a killed run leaves no half shard behind
that could be mistaken for a finished one.
"""

import json
import os
from pathlib import Path

import numpy as np
from flax import serialization

FORMAT = "dav2_pseudo_labels"
VERSION = 1
MANIFEST = "manifest.json"
SETTINGS = "settings.json"


def encode_record(name, encoded_image, disparity):
    """One record's bytes. disparity: [H, W] float, stored as float16."""
    return serialization.msgpack_serialize(
        {"name": name, "image": encoded_image, "disparity": np.asarray(disparity, np.float16)}
    )


def decode_record(data):
    """Record bytes → {"name": str, "image": bytes (encoded), "disparity": float16 [H, W]}."""
    return serialization.msgpack_restore(data)


def shard_stem(index):
    return f"shard-{index:05d}"


def shard_paths(root, index):
    """(records file, JSON note) of shard `index` under `root`."""
    base = Path(root) / "shards" / shard_stem(index)
    return base.with_suffix(".array_record"), base.with_suffix(".json")


def shard_done(root, index):
    return shard_paths(root, index)[1].exists()


def write_shard(root, index, records, skipped):
    """Write shard `index` atomically: `records` is a list of record bytes, `skipped` [{"name", "reason"}]."""
    from array_record.python.array_record_module import ArrayRecordWriter

    data_path, note_path = shard_paths(root, index)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = data_path.with_name(data_path.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")  # random access to single records
    for record in records:
        writer.write(record)
    writer.close()
    os.replace(tmp, data_path)
    note = {"shard": index, "file": data_path.name, "records": len(records), "skipped": skipped}
    tmp_note = note_path.with_name(note_path.name + ".tmp")
    tmp_note.write_text(json.dumps(note, indent=1))
    os.replace(tmp_note, note_path)


def check_settings(root, settings):
    """Record the run's settings, or check that a resumed run uses the same ones (ValueError if not)."""
    path = Path(root) / SETTINGS
    if path.exists():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in saved.keys() | settings.keys() if saved.get(k) != settings.get(k))
        if changed:
            differences = ", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ValueError(
                f"{root!s} holds pseudo labels made with other settings ({differences}); rerun the original "
                "command to resume, or choose another --output"
            )
        return
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(SETTINGS + ".tmp")
    tmp.write_text(json.dumps(settings, indent=1))
    os.replace(tmp, path)


def write_manifest(root, num_shards, settings):
    """Gather the shard notes into manifest.json; returns it. All shards must be done."""
    shards = []
    for index in range(num_shards):
        note_path = shard_paths(root, index)[1]
        if not note_path.exists():
            raise RuntimeError(f"shard {index} of {root!s} is not finished; cannot write the manifest")
        shards.append(json.loads(note_path.read_text()))
    manifest = {
        "format": FORMAT, "version": VERSION, "settings": settings,
        "records": sum(s["records"] for s in shards),
        "skipped": [item for s in shards for item in s["skipped"]],
        "shards": [{"file": f"shards/{s['file']}", "records": s["records"]} for s in shards],
    }
    tmp = Path(root) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, Path(root) / MANIFEST)
    return manifest


def read_manifest(root):
    """manifest.json of a finished output directory; errors say what is missing and what to do."""
    path = Path(root) / MANIFEST
    if not path.exists():
        hint = ("its pseudo-labelling run has not finished: rerun the same launch/pseudo_label.py command to "
                "complete it") if (Path(root) / SETTINGS).exists() else (
                "expected the --output folder of launch/pseudo_label.py")
        raise FileNotFoundError(f"no {MANIFEST} in {str(root)!r}: {hint}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pseudo-label manifest (format {manifest.get('format')!r})")
    return manifest
