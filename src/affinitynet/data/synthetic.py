"""The built-in synthetic dataset: a weakly supervised problem small enough for a CPU, in VOC layout.

Each object is a *body* (ellipse, rounded rectangle, rounded polygon or blob) whose colour comes from a
palette shared by all classes, carrying one small *part*: a square patch with a class-specific black/white
pattern (stripes, checkerboard, dots, rings, ...). Only the part tells the class, so a classifier looks at
the part and its CAM covers little of the body; the mask labels the whole body. Distractor bodies (no part,
or a plain decoy patch) and a cluttered background make "there is a body" carry no class information.
``style="shapes"`` builds a second kind of problem from the same parts: each class has its own body shape
and a smaller mark, with no class evidence over the rest of the body. See docs/synthetic.md.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from .. import io
from ..errors import ConfigError
from ..ops.metrics import confusion_matrix, scores

PATTERNS = ["hstripes", "vstripes", "checker", "dots", "rings", "diagonal", "cross", "grid"]
MARKER = "synthetic.json"
VERSION = 1

# Body colours, shared by every class (and by the distractors).
BODY_COLOURS = np.array([
    (220, 40, 40), (40, 170, 60), (40, 80, 220), (235, 200, 30), (200, 50, 200),
    (30, 190, 200), (240, 130, 20), (130, 60, 200), (150, 220, 60), (240, 110, 170),
], dtype=np.float32)
BODY_ECHO = 24.0  # amplitude (grey levels) of the faint class pattern over an object's whole body
MIN_CONTRAST = 90.0  # Euclidean RGB distance between a body colour and the background under it
SPLITS = ("train", "val")
STYLES = ("parts", "shapes")  # class told by the part alone | by the body's shape family and a small mark


def class_names(classes: int) -> list[str]:
    """The names of the first ``classes`` patterns."""
    if not 1 <= classes <= len(PATTERNS):
        raise ConfigError(f"the synthetic set has 1 to {len(PATTERNS)} classes, got {classes}")
    return PATTERNS[:classes]


# ---- drawing ---------------------------------------------------------------------------------------
def _pattern(kind: str, p: int, unit: int, rng: np.random.Generator) -> np.ndarray:
    """(p, p) bool: True where the part is light."""
    y, x = np.mgrid[0:p, 0:p]
    ph, pv = rng.integers(0, 2 * unit, size=2)
    if kind == "hstripes":
        return ((y + ph) // unit) % 2 == 0
    if kind == "vstripes":
        return ((x + pv) // unit) % 2 == 0
    if kind == "checker":
        return ((x + pv) // unit + (y + ph) // unit) % 2 == 0
    if kind == "diagonal":
        return ((x + y + ph) // unit) % 2 == 0
    if kind == "dots":
        period = unit + 2
        return ((x + pv) % period < 2) & ((y + ph) % period < 2)
    if kind == "rings":
        c = (p - 1) / 2
        return (np.hypot(x - c, y - c) // max(unit - 1, 1)).astype(int) % 2 == 0
    if kind == "cross":
        c, w = (p - 1) / 2, max(p / 6, 1.0)
        return (np.abs(x - c) <= w) | (np.abs(y - c) <= w)
    if kind == "grid":
        period = unit + 2
        return ~(((x + pv) % period == 0) | ((y + ph) % period == 0))
    raise ValueError(f"unknown pattern {kind!r}")


def _body_mask(size: int, rng: np.random.Generator, family: int | None = None) -> tuple[np.ndarray, tuple, tuple]:
    """(size, size) bool body of shape ``family`` (0-4; random 0-3 if None), its window and (cx, cy, major semi-axis)."""
    a = size * rng.uniform(0.26, 0.48) / 2
    b = a * rng.uniform(0.65, 1.0)
    cx, cy = rng.uniform(0.6 * a, size - 0.6 * a, size=2)
    phi = rng.uniform(0, np.pi)
    reach = 1.4 * a + 1  # no shape family reaches further from the centre
    ys = slice(max(int(cy - reach), 0), min(int(cy + reach) + 2, size))
    xs = slice(max(int(cx - reach), 0), min(int(cx + reach) + 2, size))
    y, x = np.ogrid[ys, xs]
    dx, dy = x.astype(np.float32) - cx, y.astype(np.float32) - cy
    xr = dx * np.cos(phi) + dy * np.sin(phi)
    yr = -dx * np.sin(phi) + dy * np.cos(phi)
    shape = rng.integers(0, 4) if family is None else family
    if shape == 0:  # ellipse
        m = (xr / a) ** 2 + (yr / b) ** 2 <= 1
    elif shape == 1:  # rounded rectangle (superellipse)
        e = rng.uniform(3, 5)
        m = np.abs(xr / a) ** e + np.abs(yr / b) ** e <= 1
    elif shape in (2, 4):  # rounded polygon (4: a rounded triangle)
        n = int(rng.integers(5, 8)) if shape == 2 else 3
        theta = np.arctan2(yr, xr * b / a)
        poly = np.cos(np.pi / n) / np.cos(np.mod(theta, 2 * np.pi / n) - np.pi / n)
        m = np.hypot(xr, yr * a / b) <= a * (0.55 * poly + 0.45)
    else:  # blob: a circle with low-frequency radial harmonics
        theta = np.arctan2(yr, xr)
        r = np.ones_like(theta)
        for k in (2, 3, 4):
            r += rng.uniform(-0.12, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        m = np.hypot(xr, yr * a / b) <= a * r
    full = np.zeros((size, size), dtype=bool)
    full[ys, xs] = m
    return full, (ys, xs), (float(cx), float(cy), float(a))


def _fits(mask: np.ndarray, w: int) -> np.ndarray:
    """(H-w+1, W-w+1) bool: the w x w window at each top-left corner lies inside ``mask``."""
    if mask.shape[0] < w or mask.shape[1] < w:
        return np.zeros((0, 0), dtype=bool)
    ii = np.pad(mask.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    s = ii[w:, w:] - ii[:-w, w:] - ii[w:, :-w] + ii[:-w, :-w]
    return s == w * w


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32 cluttered background: gradient, smooth waves, low-contrast blobs and lines."""
    y, x = np.ogrid[0:size, 0:size]
    y, x = y.astype(np.float32) / size, x.astype(np.float32) / size
    c0 = np.clip(rng.uniform(70, 180) + rng.normal(0, 18, 3), 30, 220).astype(np.float32)
    c1 = np.clip(c0 + rng.normal(0, 35, 3), 20, 230).astype(np.float32)
    th = rng.uniform(0, 2 * np.pi)
    t = x * np.float32(np.cos(th)) + y * np.float32(np.sin(th))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + t[..., None] * (c1 - c0)
    for _ in range(2):
        f, ph, amp = rng.uniform(1, 3), rng.uniform(0, 2 * np.pi), rng.uniform(3, 8)
        d = rng.uniform(0, 2 * np.pi)
        img += (amp * np.sin(2 * np.pi * f * (x * np.cos(d) + y * np.sin(d)) + ph)).astype(np.float32)[..., None]
    for _ in range(int(rng.integers(3, 8))):  # low-contrast blobs
        cx, cy = rng.uniform(0, size, 2)
        ra, rb = rng.uniform(0.04, 0.15, 2) * size
        ys = slice(max(int(cy - rb), 0), min(int(cy + rb) + 2, size))
        xs = slice(max(int(cx - ra), 0), min(int(cx + ra) + 2, size))
        yy, xx = np.ogrid[ys, xs]
        m = ((xx - cx) / ra) ** 2 + ((yy - cy) / rb) ** 2 <= 1
        img[ys, xs][m] += rng.normal(0, 14, 3).astype(np.float32)
    for _ in range(int(rng.integers(2, 5))):  # thin low-contrast lines
        d, off = rng.uniform(0, np.pi), rng.uniform(0.1, 0.9)
        dist = np.abs((x - 0.5) * np.sin(d) - (y - 0.5) * np.cos(d) - (off - 0.5))
        img[dist * size < rng.uniform(0.5, 1.3)] += np.float32(rng.choice([-1, 1]) * rng.uniform(12, 22))
    return img


def _boundary(inst: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose 3x3 neighbourhood holds another instance id (a band ~2 px wide)."""
    p = np.pad(inst, 1, mode="edge")
    h, w = inst.shape
    band = np.zeros(inst.shape, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            band |= p[dy:dy + h, dx:dx + w] != inst
    return band


def render_image(size: int, classes: int, rng: np.random.Generator, style: str = "parts") -> dict:
    """One synthetic image: dict(image (S,S,3) uint8, mask (S,S) uint8, part (S,S) bool, objects [dict])."""
    shapes = style == "shapes"
    names = class_names(classes)
    unit = max(2, round(4 * size / 128))
    img = _background(size, rng)
    inst = np.zeros((size, size), dtype=np.int16)  # object instance ids (distractors stay 0)
    cls = np.zeros((size, size), dtype=np.uint8)
    part_px = np.zeros((size, size), dtype=bool)
    occupied: list[np.ndarray] = []
    keep_out = np.zeros((size, size), dtype=bool)  # parts (dilated) that later bodies must not cover

    n_obj = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    n_dis = int(rng.choice([0, 1, 2], p=[0.35, 0.4, 0.25]))
    kinds = ["distractor"] * n_dis + ["object"] * n_obj  # distractors lie under the objects
    objects = []
    for kind in kinds:
        c = int(rng.integers(classes)) if shapes and kind == "object" else None
        family = None if not shapes else (c % 5 if c is not None else int(rng.integers(0, 5)))
        for _ in range(40):
            body, (ys, xs), (cx, cy, a) = _body_mask(size, rng, family)
            area = int(body.sum())
            if area < 0.02 * size * size or (body & keep_out).any():
                continue
            if any((body & m).sum() > 0.15 * min(area, int(m.sum())) for m in occupied):
                continue
            p = int(max(6, round(size * (rng.uniform(0.07, 0.09) if shapes else rng.uniform(0.12, 0.16)))))
            spots = np.argwhere(_fits(body[ys, xs], p + 2)) + (ys.start, xs.start)  # part + 1 px margin
            if len(spots) == 0:
                continue
            break
        else:
            continue  # no room left in this image for another body
        bg_mean = img[body].mean(0)
        dist = np.linalg.norm(BODY_COLOURS - bg_mean, axis=1)
        under = [c for c in range(len(BODY_COLOURS)) if dist[c] >= MIN_CONTRAST]
        colour = BODY_COLOURS[rng.choice(under) if under else int(dist.argmax())]
        # mild shading across the body plus noise
        yy, xx = np.nonzero(body)
        d = rng.uniform(0, 2 * np.pi)
        shade = 1 + rng.uniform(0.08, 0.18) * ((xx - cx) * np.cos(d) + (yy - cy) * np.sin(d)) / max(a, 1)
        img[yy, xx] = colour * shade[:, None] + rng.normal(0, 4, (len(yy), 3))
        occupied.append(body)
        y0, x0 = spots[rng.integers(len(spots))] + 1
        obj = {"kind": kind, "bbox": [int(xx.min()), int(yy.min()), int(xx.max()), int(yy.max())]}
        if kind == "object":
            if not shapes:
                c = int(rng.integers(classes))
                # a faint echo of the class pattern over the whole body: weak evidence, like the fur of a cat
                # beside its face, so the CAM is low but not zero there
                echo = _pattern(names[c], size, unit, rng)[yy, xx]
                img[yy, xx] += BODY_ECHO * np.where(echo, 1.0, -1.0)[:, None]
            pat = _pattern(names[c], p, unit, rng)
            dark, light = rng.uniform(0, 45), rng.uniform(210, 255)
            patch = np.where(pat, light, dark)[..., None] + rng.normal(0, 5, (p, p, 3))
            img[y0:y0 + p, x0:x0 + p] = patch
            inst[body] = len(objects) + 1
            cls[body] = c + 1
            part_px[y0:y0 + p, x0:x0 + p] = True
            keep_out[max(y0 - 2, 0):y0 + p + 2, max(x0 - 2, 0):x0 + p + 2] = True
            obj.update(cls=c + 1, name=names[c], part=[int(x0), int(y0), p])
        elif rng.random() < 0.5:  # decoy: a plain patch that is no class
            img[y0:y0 + p, x0:x0 + p] = rng.choice([rng.uniform(0, 45), rng.uniform(210, 255)]) \
                + rng.normal(0, 5, (p, p, 3))
        objects.append(obj)
    # recompute bounding boxes of objects from their visible pixels (later bodies may cover some)
    for k, obj in enumerate(objects):
        if obj["kind"] == "object":
            yy, xx = np.nonzero(inst == k + 1)
            obj["bbox"] = [int(xx.min()), int(yy.min()), int(xx.max()), int(yy.max())]
            obj["area"] = int(len(yy))
    mask = cls.copy()
    mask[_boundary(inst)] = 255
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return {"image": image, "mask": mask, "part": part_px, "objects": objects}


def _annotation_xml(name: str, size: int, objects: list[dict]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "synthetic"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    sz = ET.SubElement(root, "size")
    for tag, v in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        if obj["kind"] != "object":
            continue
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = obj["name"]
        ET.SubElement(o, "truncated").text = "0"
        ET.SubElement(o, "difficult").text = "0"
        bb = ET.SubElement(o, "bndbox")
        x0, y0, x1, y1 = obj["bbox"]
        for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1 + 1), ("ymax", y1 + 1)):
            ET.SubElement(bb, tag).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def generate(out, *, train: int = 240, val: int = 60, size: int = 128, classes: int = 5, seed: int = 0,
             style: str = "parts") -> Path:
    """Write the synthetic set in VOC layout to ``out`` (same bytes for the same arguments); returns ``out``."""
    names_cls = class_names(classes)
    if style not in STYLES:
        raise ConfigError(f"unknown synthetic style '{style}' (valid: {', '.join(STYLES)})")
    if size < 48:
        raise ConfigError(f"the synthetic set needs images of at least 48 px, got {size}")
    if train < 1 or val < 1:
        raise ConfigError(f"the synthetic set needs at least one train and one val image, got {train}, {val}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)  # incomplete until the marker is written again
    io.write_text(out / "classes.txt", "".join(f"{c}\n" for c in names_cls))
    n_objects, n_distractors = [], []
    inst_per_class = np.zeros(classes, dtype=np.int64)
    img_per_class = np.zeros(classes, dtype=np.int64)
    area_frac, part_frac, fg_frac, void_frac = [], [], [], []
    conf = np.zeros((classes + 1, classes + 2), dtype=np.int64)
    for split_id, (split, count) in enumerate(zip(SPLITS, (train, val))):
        names = []
        for i in range(count):
            name = f"{split}_{i:05d}"
            rng = np.random.default_rng([seed, split_id, i])
            r = render_image(size, classes, rng, style)
            with io.atomic_path(out / "JPEGImages" / f"{name}.jpg") as tmp:
                Image.fromarray(r["image"]).save(tmp, format="JPEG", quality=95)
            io.save_label_png(out / "SegmentationClass" / f"{name}.png", r["mask"])
            with io.atomic_path(out / "Annotations" / f"{name}.xml") as tmp:
                tmp.write_text(_annotation_xml(name, size, r["objects"]), encoding="utf-8")
            names.append(name)
            objs = [o for o in r["objects"] if o["kind"] == "object"]
            n_objects.append(len(objs))
            n_distractors.append(len(r["objects"]) - len(objs))
            for o in objs:
                inst_per_class[o["cls"] - 1] += 1
                area_frac.append(o["area"] / size ** 2)
                part_frac.append(o["part"][2] ** 2 / o["area"])
            for c in {o["cls"] for o in objs}:
                img_per_class[c - 1] += 1
            fg_frac.append(float(((r["mask"] > 0) & (r["mask"] < 255)).mean()))
            void_frac.append(float((r["mask"] == 255).mean()))
            part_label = np.where(r["part"], r["mask"], 0)  # an ideal "part-only" CAM labelling
            part_label[part_label == 255] = 0
            conf += confusion_matrix(part_label, r["mask"], classes + 1)
        io.write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{n}\n" for n in names))
    hist = np.bincount(n_objects, minlength=4)
    stats = {
        "images": train + val,
        "objects_per_image": round(float(np.mean(n_objects)), 3),
        "objects_histogram": {str(k): int(hist[k]) for k in range(len(hist)) if hist[k]},
        "distractors_per_image": round(float(np.mean(n_distractors)), 3),
        "instances_per_class": dict(zip(names_cls, inst_per_class.tolist())),
        "images_per_class": dict(zip(names_cls, img_per_class.tolist())),
        "mean_object_area_fraction": round(float(np.mean(area_frac)), 4),
        "mean_foreground_fraction": round(float(np.mean(fg_frac)), 4),
        "mean_void_fraction": round(float(np.mean(void_frac)), 4),
        "mean_part_fraction_of_object": round(float(np.mean(part_frac)), 4),
        "part_only_miou": round(scores(conf, ["background"] + names_cls)["miou"], 2),
    }
    params = {"train": train, "val": val, "size": size, "classes": classes, "seed": seed,
              **({"style": style} if style != "parts" else {})}  # sets made before styles existed stay valid
    io.write_json(out / MARKER, {"generator": "affinitynet.data.synthetic", "version": VERSION, "params": params,
                                 "classes": names_cls, "stats": stats})
    return out


def read_marker(root) -> dict | None:
    """The marker of a complete synthetic set in ``root``, or None when there is none (absent or incomplete)."""
    path = Path(root) / MARKER
    if not path.is_file():
        return None
    return io.read_json(path)


def render_samples(root, out, *, split: str = "val", n: int = 6, gap: int = 4) -> Path:
    """Write a PNG grid: ``n`` images of ``split`` on top, their colour masks underneath; returns ``out``."""
    root = Path(root)
    names = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]
    images = [Image.fromarray(io.load_image(root / "JPEGImages" / f"{nm}.jpg")) for nm in names]
    masks = [io.label_to_pil(io.load_label_png(root / "SegmentationClass" / f"{nm}.png")).convert("RGB")
             for nm in names]
    w, h = images[0].size
    sheet = Image.new("RGB", (len(names) * (w + gap) + gap, 2 * (h + gap) + gap), (255, 255, 255))
    for k, (im, m) in enumerate(zip(images, masks)):
        sheet.paste(im, (gap + k * (w + gap), gap))
        sheet.paste(m, (gap + k * (w + gap), 2 * gap + h))
    with io.atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(out)
