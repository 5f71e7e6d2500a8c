"""Atomic file writes, palette PNGs and ``.npz`` files: every file the project writes goes through here."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared like any other file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename != str(path):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e  # name the file, not the temp file
        raise


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path):
    """Read a JSON file, naming the file in the error if it does not parse."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e})") from None


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (n, 3) uint8, index 255 is the 'void' colour (224, 224, 192)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


_PALETTE = voc_palette().reshape(-1).tolist()


def label_to_pil(label: np.ndarray) -> Image.Image:
    """(H, W) uint8 class ids -> palette ('P' mode) image in VOC colours."""
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label.shape}")
    img = Image.fromarray(np.ascontiguousarray(label.astype(np.uint8)), mode="P")
    img.putpalette(_PALETTE)
    return img


def save_label_png(path, label: np.ndarray, *, palette: bool = True) -> None:
    """Write an (H, W) class-id map as a VOC palette PNG (``palette=False``: a single-channel 8-bit PNG), atomically."""
    img = label_to_pil(label) if palette else Image.fromarray(np.ascontiguousarray(label.astype(np.uint8)), mode="L")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def load_label_png(path, *, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a palette (or single-channel) PNG of class ids -> (H, W) uint8.

    ``expect_size`` is (H, W); a mismatch, an RGB mask or an unreadable file raises DataError naming ``path``.
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("P", "L"):
                raise DataError(path, f"label mask must be a palette or grey PNG of class ids, got mode {img.mode}")
            arr = np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(path, f"cannot read mask ({e})") from None
    if expect_size is not None and arr.shape != tuple(expect_size):
        raise DataError(path, f"mask size {arr.shape[1]}x{arr.shape[0]} does not match image size "
                              f"{expect_size[1]}x{expect_size[0]}")
    return arr


def load_image(path) -> np.ndarray:
    """Read an image file -> (H, W, 3) uint8 RGB as displayed; a missing or corrupt file raises DataError naming it.

    The EXIF orientation tag is applied (a phone photo stored sideways comes out upright, as annotation tools
    show it); 16-bit and float images are scaled to 8 bits (``rgb8``); palette, grey, alpha and CMYK images
    become RGB (alpha is dropped). Label masks are read by ``load_label_png`` instead, never rotated or scaled.
    """
    try:
        with Image.open(path) as img:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return rgb8(img)
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except PixelRangeError as e:
        raise DataError(path, str(e)) from None
    except Exception as e:
        raise DataError(path, f"cannot read image ({e})") from None


class PixelRangeError(ValueError):
    """Pixel values of a 32-bit or float image that no 8-bit mapping places."""


def rgb8(img: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8 RGB.

    16-bit grey (``I;16*``, and ``I`` holding 0..65535) maps 0..65535 onto 0..255 (round(v / 257)); float
    grey (``F``) must hold values in [0, 1], mapped onto 0..255. Anything else goes through PIL's RGB
    conversion. Values those rules cannot place raise PixelRangeError.
    """
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise PixelRangeError(f"32-bit integer image with values {a.min()}..{a.max()} outside 0..65535; "
                                  f"save it as an 8- or 16-bit image")
        grey = ((a * 255 + 32767) // 65535).astype(np.uint8)
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise PixelRangeError(f"floating-point image with values {np.nanmin(a):g}..{np.nanmax(a):g} outside "
                                  f"[0, 1]; save it as an 8- or 16-bit image")
        grey = np.rint(a * 255.0).astype(np.uint8)
    else:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return np.repeat(grey[:, :, None], 3, axis=2)


def image_size(path) -> tuple[int, int]:
    """(H, W) of an image file as displayed (EXIF orientation applied), without decoding the pixels of a JPEG."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(ExifTags.Base.Orientation, 1) in _TRANSPOSING:
                w, h = h, w
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except Exception as e:
        raise DataError(path, f"cannot read image ({e})") from None
    return h, w


_TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def save_npz(path, compressed: bool = False, **arrays) -> None:
    """Write arrays to a ``.npz`` (zip-deflated when ``compressed``) atomically (fixed keys chosen by the caller)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes; a missing file raises DataError naming it.

    Remembered per process for an unchanged file (same size, modification time and inode): a run hashes
    a given checkpoint for its stage's identity and again when the stage adopts it.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    return _sha256_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    return h.hexdigest()


def load_npz(path, keys=None) -> dict[str, np.ndarray]:
    """Read all arrays of an ``.npz`` file (or only ``keys``); a truncated file or a missing key raises DataError
    naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in (z.files if keys is None else keys)}
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except Exception as e:
        raise DataError(path, f"cannot read .npz ({e})") from None


def save_cam(path, keys, maps) -> None:
    """Write one image's CAMs: keys (C',) class ids and maps (C', H, W) in [0, 1] (tensors), as int16 / float16 ``.npz``."""
    save_npz(path, keys=keys.cpu().numpy().astype(np.int16), cams=maps.cpu().numpy().astype(np.float16))


def load_cam(path) -> tuple[np.ndarray, np.ndarray]:
    """(keys (C',) int64 class ids 1..C, maps (C', H, W) float32) of one image's CAM file."""
    z = load_npz(path)
    return z["keys"].astype(np.int64), z["cams"].astype(np.float32)
