"""Collections of unlabelled images for pseudo-labelling, each a fixed, ordered list of encoded images.

Every collection has `__len__`, `name(i) -> str` and `encoded(i) -> bytes` (the file's bytes exactly as stored, no
re-encoding; `OSError` when they cannot be read). The order is fixed when the collection is opened (sorted paths,
the text file's order, the TFDS index, the synthetic index), which is what lets a pseudo-labelling run be cut into
shards and resumed. `open_unlabeled(spec, ...)` picks the collection from a `--input` string.
"""

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from launch.data import scenes, synthetic
from launch.images import IMAGE_EXTENSIONS, read_rgb


class FolderImages:
    """Every image file (by extension, case-insensitive) under `root`, recursively; names relative to `root`."""

    def __init__(self, root):
        self.root = Path(root)
        self.names = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.names:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(self.root)!r}")

    def __len__(self):
        return len(self.names)

    def name(self, i):
        return self.names[i]

    def encoded(self, i):
        return (self.root / self.names[i]).read_bytes()


class ListedImages:
    """The image paths of a text file, one per line in that order (blank lines and `#` comments ignored).

    A relative path is relative to the text file's folder; the name of an image is the path as written.
    """

    def __init__(self, list_file):
        self.base = Path(list_file).parent
        lines = (line.strip() for line in Path(list_file).read_text().splitlines())
        self.names = [line for line in lines if line and not line.startswith("#")]
        if not self.names:
            raise ValueError(f"{list_file!r} lists no image paths; expected one path per line")

    def __len__(self):
        return len(self.names)

    def name(self, i):
        return self.names[i]

    def encoded(self, i):
        return (self.base / self.names[i]).read_bytes()


class TfdsImages:
    """The images of a prepared TFDS data set, read through `tfds.data_source` (no TensorFlow needed).

    The encoded image bytes are read without decoding; the data set must have exactly one top-level image feature
    (or name it with `image_key`). Names are `NAME/SPLIT/INDEX`.
    """

    def __init__(self, name, split="train", data_dir=None, image_key=None):
        import tensorflow_datasets as tfds

        builder = tfds.builder(name, data_dir=data_dir)
        images = [k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Image)]
        if image_key is None:
            if len(images) != 1:
                raise ValueError(f"TFDS data set {name!r} has image features {images}; expected exactly one")
            image_key = images[0]
        elif image_key not in images:
            raise ValueError(f"TFDS data set {name!r} has no image feature {image_key!r} (image features: {images})")
        self.key = image_key
        self.prefix = f"{name}/{split}"
        self.source = tfds.data_source(name, split=split, data_dir=data_dir,
                                       decoders={image_key: tfds.decode.SkipDecoding()})

    def __len__(self):
        return len(self.source)

    def name(self, i):
        return f"{self.prefix}/{i}"

    def encoded(self, i):
        return bytes(self.source[i][self.key])


class SyntheticImages:
    """`launch.data.synthetic` scenes, images only, encoded losslessly as PNG (they have no file of their own)."""

    def __init__(self, num_images, height, width, seed, kind="mixed"):
        if kind not in scenes.KINDS:
            raise ValueError(f"unknown scene kind {kind!r}; expected one of {scenes.KINDS}")
        self.num_images, self.height, self.width, self.seed, self.kind = num_images, height, width, seed, kind

    def __len__(self):
        return self.num_images

    def name(self, i):
        return f"synthetic/{self.kind}/{self.seed}/{i}"

    def encoded(self, i):
        image = synthetic.generate(self.seed, i, self.height, self.width, self.kind)["image"]
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        return out.getvalue()


def open_unlabeled(spec, num_images=None, synthetic_size=(70, 98), synthetic_seed=2, data_dir=None):
    """The collection a `--input` string names.

    spec: a folder (recursive), a text file of paths, `tfds:NAME[:SPLIT]` (split default "train"; `data_dir` is the
    TFDS data directory) or `synthetic` (`num_images` scenes of `synthetic_size` (H, W) from `synthetic_seed`).
    num_images: for the others, take only the first N images (None: all).
    """
    if spec == "synthetic":
        if not num_images:
            raise ValueError("--input synthetic needs --num-images N (how many scenes to generate)")
        return SyntheticImages(num_images, *synthetic_size, seed=synthetic_seed)
    if spec.startswith("tfds:"):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[1]:
            raise ValueError(f"expected tfds:NAME or tfds:NAME:SPLIT, got {spec!r}")
        images = TfdsImages(parts[1], parts[2] if len(parts) == 3 else "train", data_dir)
    elif os.path.isdir(spec):
        images = FolderImages(spec)
    elif os.path.isfile(spec):
        images = ListedImages(spec)
    else:
        raise FileNotFoundError(
            f"--input {spec!r} is neither a folder, a text file of paths, tfds:NAME[:SPLIT] nor synthetic"
        )
    return images if num_images is None else _First(images, num_images)


class _First:
    """The first n images of a collection."""

    def __init__(self, images, n):
        self.images, self.n = images, min(n, len(images))

    def __len__(self):
        return self.n

    def name(self, i):
        return self.images.name(i)

    def encoded(self, i):
        return self.images.encoded(i)


def fingerprint(images):
    """A short hash of the ordered names: a resumed run checks that it labels the same list."""
    digest = hashlib.sha256()
    for i in range(len(images)):
        digest.update(images.name(i).encode() + b"\0")
    return digest.hexdigest()[:16]


def decode(encoded, name):
    """Encoded image bytes → RGB uint8 [H, W, 3] (grayscale replicated, alpha dropped); `UnreadableImage` if not."""
    return read_rgb(io.BytesIO(encoded), name)

