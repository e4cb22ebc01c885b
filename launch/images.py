"""The one image loader of every CLI, and the listing of what a user passes as `--input`.

Images are read as a user's viewer shows them: the EXIF orientation is applied (as OpenCV's `imread` and
diffusers' `load_image` do), 16-bit grey images are scaled to 8 bits, palette images are expanded, grey is
replicated to RGB and alpha dropped. `--input` may be an image or video file, a folder (its images, recursively
with `recursive=True`), a text file listing paths (one per line, relative to the list's folder), or a glob
pattern (`photos/*.jpg`, `photos/**/*.png`).
"""

import dataclasses
import glob
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
LIST_EXTENSIONS = (".txt", ".lst")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # 90° turns: width and height swap
_GLOB_CHARS = "*?["


class UnreadableImage(ValueError):
    """A file that cannot be decoded as an image."""


@dataclasses.dataclass(frozen=True)
class Input:
    """One input file: `path` as given, and `rel`, its path relative to the input root (names the outputs)."""

    path: str
    rel: str

    @property
    def is_video(self) -> bool:
        return self.path.lower().endswith(VIDEO_EXTENSIONS)


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(im, np.float64)
        return np.repeat(np.round(grey / 257).clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    if im.mode == "F":
        raise UnreadableImage(f"a floating-point image (PIL mode 'F') has no defined colour range; "
                              "save it as 8- or 16-bit")
    if im.mode == "P":
        im = im.convert("RGBA")  # applies the palette's transparency before alpha is dropped
    return np.asarray(im.convert("RGB"))


def read_rgb(path, name: str | None = None) -> np.ndarray:
    """Decode an image as RGB uint8 [H, W, 3], turned upright by its EXIF orientation.

    path: a file path or a binary file object; name: what error messages call it (default: the path).
    16-bit grey values v become round(v / 257) (65535 → 255); palette images are expanded; alpha is dropped.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(ImageOps.exif_transpose(im))
    except UnreadableImage as e:
        raise UnreadableImage(f"{name or path}: {e}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(f"{name or path}: not a readable image ({e})") from e


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of the upright image, from the file's header (no decoding)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            return height, width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(f"{path}: not a readable image ({e})") from e


def read_many(inputs, indices) -> tuple[list[int], list[np.ndarray], list[UnreadableImage]]:
    """Read `inputs[i]` for i in `indices`: (the readable indices, their RGB images, the errors of the others)."""
    readable, rgbs, errors = [], [], []
    for i in indices:
        try:
            rgbs.append(read_rgb(inputs[i].path))
            readable.append(i)
        except UnreadableImage as e:
            errors.append(e)
    return readable, rgbs, errors


def _media(names) -> list[str]:
    return sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))


def _folder(root: str, recursive: bool) -> list[Input]:
    if recursive:
        files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in _media(names)]
    else:
        files = [os.path.join(root, f) for f in _media(os.listdir(root)) if os.path.isfile(os.path.join(root, f))]
    if not files:
        hint = "" if recursive else " (pass --recursive to include sub-folders)"
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) or videos in {root!r}{hint}")
    return [Input(f, os.path.relpath(f, root)) for f in sorted(files)]


def _common_root(files: list[str]) -> str:
    return os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])


def _listed(list_file: str) -> list[Input]:
    base = os.path.dirname(list_file)
    with open(list_file) as f:
        lines = [line.strip() for line in f]
    files = [os.path.join(base, line) for line in lines if line and not line.startswith("#")]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(files)} paths listed in {list_file!r} are not files "
                                f"(paths are relative to the list's folder): {', '.join(missing[:5])}")
    if not files:
        raise FileNotFoundError(f"{list_file!r} lists no paths (expected one image path per line)")
    root = _common_root(files)
    return [Input(f, os.path.relpath(os.path.abspath(f), root)) for f in files]


def _globbed(pattern: str) -> list[Input]:
    files = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"the pattern {pattern!r} matches no files")
    prefix = pattern[: min(pattern.index(c) for c in _GLOB_CHARS if c in pattern)]
    root = os.path.abspath(os.path.dirname(prefix) or ".")
    return [Input(f, os.path.relpath(os.path.abspath(f), root)) for f in files]


def list_inputs(spec: str, recursive: bool = False) -> list[Input]:
    """What `--input spec` names, in a stable order: see the module docstring."""
    if os.path.isdir(spec):
        return _folder(spec, recursive)
    if os.path.isfile(spec):
        return _listed(spec) if spec.lower().endswith(LIST_EXTENSIONS) else [Input(spec, os.path.basename(spec))]
    if any(c in spec for c in _GLOB_CHARS):
        return _globbed(spec)
    raise FileNotFoundError(f"no such file or folder: {spec!r} (expected an image, a video, a folder, a .txt list "
                            "of paths or a glob pattern)")
