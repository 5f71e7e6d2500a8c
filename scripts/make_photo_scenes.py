"""Photo-like development scenes in PASCAL VOC layout: Debian artwork cut-outs on Debian photo wallpapers.

Two modes:

    # 1. once: turn Debian packages unpacked with `dpkg -x PKG.deb ROOT/PKG` into cut-outs and photos
    python scripts/make_photo_scenes.py --extract ROOT --art ART --backgrounds BG
    # 2. compose the set (numpy + Pillow only)
    python scripts/make_photo_scenes.py OUT --art ART --backgrounds BG --train 1000 --val 200 --seed 0

ART holds one folder per VOC class with RGBA cut-outs named `{source}__{name}.png`, plus `_clutter/`
(unlabelled distractors) and an optional `sources.json`; BG holds photographs (`{source}__{name}.jpg`).
See docs/photo_scenes.md.
"""

import argparse
import glob
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
IGNORE = 255
CLUTTER = "_clutter"


def voc_palette():
    """The 256-entry VOC colour map as a flat list of 768 ints (bit-interleaved label colours)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


# ---------------------------------------------------------------------------------------------------
# Extraction: Debian packages -> ART/ and BG/
# ---------------------------------------------------------------------------------------------------

# Unicode code points (hex, '-' joins a sequence) per VOC class, drawn from two emoji designs.
EMOJI = {
    "aeroplane": ["2708", "1f6eb", "1f6ec", "1f6e9"],
    "bicycle": ["1f6b2"],
    "bird": ["1f426", "1f413", "1f414", "1f424", "1f427", "1f986", "1f985", "1f989", "1f54a",
             "1f99c", "1f9a2", "1f99a", "1f983", "1f9a9"],
    "boat": ["26f5", "1f6a4", "1f6e5", "1f6a2", "26f4", "1f6f6"],
    "bottle": ["1f37e", "1f37c", "1f9f4"],
    "bus": ["1f68c", "1f68d", "1f690", "1f68e"],
    "car": ["1f697", "1f698", "1f695", "1f699", "1f3ce", "1f693", "1f694", "1f696"],
    "cat": ["1f408", "1f408-200d-2b1b"],
    "chair": ["1fa91"],
    "cow": ["1f404", "1f402", "1f403"],
    "diningtable": [],
    "dog": ["1f415", "1f429", "1f9ae", "1f415-200d-1f9ba"],
    "horse": ["1f40e"],
    "motorbike": ["1f3cd", "1f6f5"],
    "person": ["1f6b6", "1f3c3", "1f483", "1f57a", "1f9cd", "1f9ce", "1f938", "1f9d8", "1f46e",
               "1f477", "1f482", "1f935", "1f470", "1f6b6-200d-2640", "1f3c3-200d-2640"],
    "pottedplant": ["1fab4"],
    "sheep": ["1f411", "1f40f"],
    "sofa": ["1f6cb"],
    "train": ["1f682", "1f686", "1f684", "1f685", "1f688", "1f683", "1f68b", "1f69e", "1f689"],
    "tvmonitor": ["1f4fa", "1f5a5"],
}
EMOJI_CLUTTER = [
    "1f34e", "1f34c", "1f347", "1f349", "1f355", "1f354", "1f35e", "1f9c0", "1f382", "1f366",
    "1f528", "1f527", "1fa9b", "1f529", "1fa93", "1f3e0", "1f3eb", "1f3ed", "1f3f0", "26ea",
    "1f333", "1f332", "1f335", "1f344", "1f33b", "1f337", "1f490", "1f341", "26bd", "1f3c0",
    "1f3b8", "1f3ba", "1f381", "1f392", "1f4da", "1f4bc", "1f9f8", "1f41f", "1f98b", "1f40d",
    "1f418", "1f992", "1f422", "1f41d", "1f98a", "1f43b", "1f981", "1f42f", "1f992", "1f993",
    "1f418", "1f99b", "1f42b", "1f987", "1f9ed", "1f5ff", "1f3ae", "1f4f7", "1f9ef",
    "1f6e2", "1f4e6", "1f9fa", "1f45c", "1f45f", "1f452", "1f302", "2602", "1f4a1", "23f0",
]

# Openclipart (public domain) drawings per VOC class, by file name (looked up anywhere in the tree).
OPENCLIPART = {
    "aeroplane": ["airplane.png", "aircraft_jarno_vasamaa1.png", "aircraft_jarno_vasamaa2.png",
                  "aircraft_jarno_vasamaa3.png", "aircraft_jarno_vasamaa4.png",
                  "aircraft_jarno_vasamaa_.png", "airplane_nicu_buculei_01.png",
                  "military_airplane_mo_01.png", "departing_plane_01.png", "plane_silhouet_mo_01.png"],
    "bicycle": ["bicycle_01.png", "bicicletta_cycle_archite_01.png", "bicycle_philippe_colin_01.png",
                "bike_tobias_jakobs_.png", "vtt_02.png"],
    "bird": ["cigno_architetto_frances_01.png", "jonathon_s_duck_01.png", "flamand_jean-victor_bali_01.png",
             "acquila_architetto_franc_01.png", "acquila_architetto_franc_03.png", "rooster_01.png",
             "cormorant-md.png", "seagull_nicu_buculei_01.png", "hen_01.png", "gull_marcelo_staudt_01.png",
             "gallo_di_profilo_archite_01.png", "duck_yellow_kurt_cagle_.png",
             "gufo_civetta_architetto__01.png", "eagle_01.png", "pollo_architetto_frances_01.png",
             "tacchino_architetto_fran_01.png", "crow_01.png", "owl_on_branch_ganson.png", "puffin-md.png",
             "emperor_penguin_ralf_ste_01.png", "uccello_profilo_01_archi_01.png",
             "gabbiano_architetto_fran_01.png", "cigno_di_spalle_architet_01.png",
             "aquila_frontale_architet_01.png"],
    "boat": ["sailboat_illustration.png", "boat_jarno_vasamaa_.png", "boat_jarno_vasamaa1.png",
             "trawler_01.png", "the_mad_little_ship_core_01.png"],
    "bottle": ["bottled_drink.png", "baby_bottle_01.png", "bottle_jean_victor_balin_.png",
               "bottiglia_di_vino_pregi_01.png"],
    "bus": ["bus1_jarno_vasamaa_01.png", "bus2_jarno_vasamaa_01.png", "bus_01.png",
            "bus1_bw_jarno_vasamaa_01.png", "bus2_bw_jarno_vasamaa_01.png"],
    "car": ["old_car_lumen_design_st_r.png", "redcar_marcelo_caiafa_.png", "1989_chevrolet_celebrit_01.png",
            "car.png", "skoda_car_alejandro_teja_.png", "dodge_neon_pink_ganson.png",
            "dodge_neon_green_ganson.png", "car_jamin_ellis_.png", "sportcar_sergio_luiz_ara_01.png",
            "toyota_land_cruiser_ganson.png", "hummer_01.png", "hummer_04.png", "formula_one_car_gerald_g_01.png",
            "blazer_01.png", "4wd.png", "ambulans_romus_01.png"],
    "cat": ["gatto_cat_architetto_fra_01.png", "gatto_cat_architetto_fra_02.png",
            "gatto_cat_architetto_fra_03.png", "gatto_cat_architetto_fra_04.png", "kitten_gerald_g._01.png",
            "gattina_cat_architetto_f_01.png", "gatto_nero_architetto_fr_01.png",
            "sleeping_cat_ron_golan_01.png", "cartoon_cat_gerald_g._01.png", "cartoon_cat_gerald_g._02.png"],
    "chair": ["poltrona_ufficio_archite_01.png", "sedia_in_legno_architett_01.png"],
    "cow": ["vacca_pezzata_rossa_val_01.png", "bull_utrescu_.png", "mucca.png"],
    "diningtable": ["small_square_table_01.png", "tavolo_in_legno_architet_01.png",
                    "wooden_table_benji_park_01.png"],
    "dog": ["beagle_copper_ganson.png", "bulldog_puppy_ganson.png", "black_lab_ganson.png",
            "bobi_architetto_francesc_01.png", "bored_dog_01.png", "dog_01_drawn_with_strai_01.png",
            "dog_02_drawn_with_strai_01.png", "dog_03_drawn_with_strai_01.png",
            "dog_04_drawn_with_strai_01.png", "dog_05_drawn_with_strai_01.png",
            "dog_06_drawn_with_strai_01.png", "dog_on_leash_gerald_g._01.png"],
    "horse": ["cavallo_architetto_franc_01.png", "cavallo_architetto_franc_02.png",
              "cavallo_architetto_franc_03.png", "cavallo_architetto_franc_04.png",
              "cavallo_architetto_franc_05.png", "cavallo_architetto_franc_06.png",
              "cavallo_architetto_franc_07.png", "horse_1_konstantin_r._01.png",
              "horse_2_konstantin_r._01.png", "horse_1_rotkevich_konsat_01.png"],
    "motorbike": ["motorcycle_jarno_vasama_.png"],
    "person": ["silhouette_male_1.png", "silhouette_female_1.png", "silhouette_male_2.png",
               "silhouette_female_2.png", "silhouette_male_3.png", "silhouette_female_3.png",
               "police_man_ganson.png", "backpacker_ganson.png", "signore_architetto_franc_01.png",
               "signorina_architetto_fra_01.png", "bussiness_woman_donna_i_01.png",
               "fireman_enrique_meza_c_01.png", "grandpa_01.png", "kid_01.png", "boy_astrid_graeber_.png",
               "roller_blader_ganson.png", "golf_drive_ganson.png", "hikinh_ganson.png",
               "ballerina_architetto_fra_01.png"],
    "pottedplant": ["flower-pot_01.png", "flower-pot_02.png", "flowerandpot_daniel_ste_r.png"],
    "sheep": ["sheep-md-v0.1.png", "dall_sheep_ram_ganson.png", "pecora_architetto_france_01.png"],
    "sofa": ["soft_blue_couch_jonadab_01.png"],
    "train": ["tram.png", "tramway_lumen_design_stu_01.png", "kiddy_train_orlando_kara_.png"],
    "tvmonitor": ["television_peterm_.png", "tv_01.png", "lcd_monitor_shandy_brown_.png",
                  "television_alexander_d.__01.png", "crt_monitor_01.png", "monitor.png",
                  "lcd_monitor_the_structor_.png", "video_lcd_sergio_luiz_ar_01.png"],
}
OPENCLIPART_CLUTTER_DIRS = [
    "food/fruit", "food/vegetables", "food/desserts", "food/breads_and_carbs", "tools",
    "buildings/homes", "plants/trees", "plants/flowers", "recreation/music", "electronics/bulb",
    "animals/mammals/bears", "animals/mammals/big_cats", "animals/fish", "animals/bugs",
]
# Words in a clutter file name that hint at a VOC class: such files are left out of the clutter.
VOC_WORDS = ("plane", "bike", "cycle", "bird", "duck", "boat", "ship", "sail", "bottle", "bus", "car",
             "cat", "gatt", "chair", "sedia", "cow", "bull", "table", "dog", "horse", "cavallo", "moto",
             "man", "woman", "girl", "boy", "people", "person", "kid", "pot", "vaso", "sheep", "sofa",
             "couch", "train", "tram", "tv", "televis", "monitor", "screen", "bach", "beethov", "handel",
             "mozart", "chopin", "verdi", "vivaldi", "portrait", "face")

# Photographs (no VOC object in view) by package and glob, and what their copyright file says.
PHOTOS = {
    "lomiri-wallpapers-16.04": ["usr/share/backgrounds/Bridge_by_*.jpg", "usr/share/backgrounds/Dragonfly_*.jpg",
                                "usr/share/backgrounds/Picture_0B_*.jpg", "usr/share/backgrounds/Picture_1A_*.jpg",
                                "usr/share/backgrounds/aitzgorri_*.jpg", "usr/share/backgrounds/life_*.jpg",
                                "usr/share/backgrounds/picosdeeuropa_*.jpg", "usr/share/backgrounds/seeding_*.jpg",
                                "usr/share/backgrounds/sunset_*.jpg"],
    "mate-backgrounds": ["usr/share/backgrounds/mate/nature/*.jpg"],
    "plasma-workspace-wallpapers": [f"usr/share/wallpapers/{n}" for n in (
        "BytheWater", "ColdRipple", "DarkestHour", "FallenLeaf", "Kite", "OneStandsOut", "Path", "summer_1am")],
}
LICENCES = {
    "fonts-noto-color-emoji": "Noto Color Emoji, Google: SIL Open Font License 1.1 (font), Apache-2.0",
    "ruby-gemojione": "EmojiOne 2 artwork (assets/*), Ranks.com: CC-BY-SA-4.0",
    "openclipart-png": "Open Clip Art Library 0.18: public domain dedication (per-image author in the package)",
    "lomiri-wallpapers-16.04": "per file: CC-BY-4.0 / CC-BY-SA-3.0 / CC-BY-SA-4.0 / CC0-1.0 (see copyright file)",
    "mate-backgrounds": "nature/*: GPL-2+ (photographers listed in the copyright file)",
    "plasma-workspace-wallpapers": "per wallpaper: LGPL/CC-BY-SA (see copyright file)",
}


def _alpha_crop(im, max_side=512):
    """Crop an RGBA image to its alpha > 8 box and shrink to max_side; None if it has no real alpha."""
    im = im.convert("RGBA")
    a = np.asarray(im)[..., 3]
    if (a < 8).mean() < 0.05 or (a > 128).mean() < 0.02:
        return None
    box = Image.fromarray(((a > 8) * 255).astype(np.uint8)).getbbox()
    im = im.crop(box)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.LANCZOS)
    return im


def _noto(font, cps):
    """Render a code point sequence ('1f408-200d-2b1b') with the colour font: RGBA or None."""
    text = "".join(chr(int(c, 16)) for c in cps.split("-"))
    im = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((20, 20), text, font=font, embedded_color=True)
    a = np.asarray(im)[..., 3]
    if (a > 128).sum() < 500:
        return None
    # a glyph missing from the font renders as an empty box or a pair of glyphs: keep single wide glyphs
    box = im.getbbox()
    if box is None or box[2] - box[0] > 160:
        return None
    return _alpha_crop(im)


def _emojione_svg(root, cps):
    """Rasterise one EmojiOne SVG at 512 px with rsvg-convert: RGBA or None."""
    name = "-".join(c.upper() for c in cps.split("-"))
    hits = glob.glob(os.path.join(root, "**", "assets", "svg", name + ".svg"), recursive=True)
    if not hits:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "e.png")
        subprocess.run(["rsvg-convert", "-w", "512", "-h", "512", hits[0], "-o", out], check=True)
        return _alpha_crop(Image.open(out))


def extract(root, art, backgrounds):
    """Write ART/{class}/*.png, ART/_clutter/*.png, BG/*.jpg and ART/sources.json from unpacked packages."""
    font_path = glob.glob(os.path.join(root, "fonts-noto-color-emoji", "**", "NotoColorEmoji.ttf"), recursive=True)
    font = ImageFont.truetype(font_path[0], 109) if font_path else None
    emojione = os.path.join(root, "ruby-gemojione")
    clip_root = os.path.join(root, "openclipart-png", "usr", "share", "openclipart", "png")
    by_name = {}
    for f in sorted(glob.glob(os.path.join(clip_root, "**", "*.png"), recursive=True)):
        if "roadsigns" not in f and "signs_and_symbols" not in f:  # the same names are also road signs
            by_name.setdefault(os.path.basename(f), f)
    seen = set()
    counts = {}

    def put(folder, source, name, im):
        if im is None:
            return
        digest = hashlib.md5(im.tobytes()).hexdigest()
        if digest in seen:
            return
        seen.add(digest)
        os.makedirs(os.path.join(art, folder), exist_ok=True)
        im.save(os.path.join(art, folder, f"{source}__{name}.png"))
        counts.setdefault(folder, {}).setdefault(source, 0)
        counts[folder][source] += 1

    for cls in VOC_CLASSES:
        for cps in EMOJI[cls]:
            if font is not None:
                put(cls, "noto", cps, _noto(font, cps))
            if os.path.isdir(emojione):
                put(cls, "emojione", cps, _emojione_svg(emojione, cps))
        for name in OPENCLIPART[cls]:
            if name in by_name:
                put(cls, "openclipart", name[:-4], _alpha_crop(Image.open(by_name[name])))
    for cps in EMOJI_CLUTTER:
        if font is not None:
            put(CLUTTER, "noto", cps, _noto(font, cps))
        if os.path.isdir(emojione):
            put(CLUTTER, "emojione", cps, _emojione_svg(emojione, cps))
    for d in OPENCLIPART_CLUTTER_DIRS:
        for f in sorted(glob.glob(os.path.join(clip_root, d, "**", "*.png"), recursive=True))[:40]:
            base = os.path.basename(f)[:-4].lower()
            if "weapon" in f or any(w in base for w in VOC_WORDS):
                continue
            put(CLUTTER, "openclipart", base, _alpha_crop(Image.open(f)))

    os.makedirs(backgrounds, exist_ok=True)
    photos = {}
    for pkg, patterns in PHOTOS.items():
        for pat in patterns:
            for f in sorted(glob.glob(os.path.join(root, pkg, pat))):
                if os.path.isdir(f):  # a Plasma wallpaper folder: take its largest image
                    f = max(glob.glob(os.path.join(f, "contents", "images", "*")), key=os.path.getsize)
                name = os.path.splitext(os.path.basename(f))[0]
                if pkg.startswith("plasma"):
                    name = f.split(os.sep)[-4]
                im = Image.open(f).convert("RGB")
                im.thumbnail((1280, 1280), Image.LANCZOS)
                out = f"{pkg}__{name}.jpg"
                im.save(os.path.join(backgrounds, out), quality=92)
                photos[out] = os.path.relpath(f, root)
    sources = {"art_counts": counts, "photos": photos,
               "licences": {k: v for k, v in LICENCES.items() if os.path.isdir(os.path.join(root, k))}}
    with open(os.path.join(art, "sources.json"), "w") as fh:
        json.dump(sources, fh, indent=1, sort_keys=True)
    return sources


# ---------------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------------

ASPECTS = ((4 / 3, 0.35), (3 / 2, 0.2), (1.0, 0.1), (3 / 4, 0.25), (2 / 3, 0.1))  # width / height


def split_files(files, rng, holdout=0.2):
    """Split a sorted list of `{source}__name` files into (train, val), holding out ~20 % of each source."""
    groups = {}
    for f in files:
        groups.setdefault(os.path.basename(f).split("__")[0], []).append(f)
    train, val = [], []
    for src in sorted(groups):
        g = list(groups[src])
        rng.shuffle(g)
        k = int(round(holdout * len(g))) if len(g) >= 3 else 0
        val += g[:k]
        train += g[k:]
    if not val:  # one or two cut-outs in all: both splits share them
        val = list(train)
    return train, val


def load_material(art, backgrounds, seed):
    """Lists of files per class / clutter / background, each split train/val: {'train': {...}, 'val': {...}}."""
    rng = np.random.default_rng([seed, 7])
    out = {"train": {}, "val": {}}
    for key in list(VOC_CLASSES) + [CLUTTER]:
        files = sorted(glob.glob(os.path.join(art, key, "*.png")))
        if not files:
            continue
        tr, va = split_files(files, rng)
        out["train"][key], out["val"][key] = tr, va
    bg = sorted(f for f in glob.glob(os.path.join(backgrounds, "*")) if f.lower().endswith((".jpg", ".jpeg", ".png", ".webp")))
    if not bg:
        sys.exit(f"no photographs in {backgrounds}")
    rng.shuffle(bg)
    k = max(1, int(round(0.2 * len(bg)))) if len(bg) >= 3 else 0
    out["val"]["_bg"] = bg[:k] if k else bg
    out["train"]["_bg"] = bg[k:]
    return out


def background(path, rng, size_min, size_max, cache):
    """A random crop of a photo, resized to a VOC-like shape with a long side in [size_min, size_max]."""
    if path not in cache:
        cache[path] = Image.open(path).convert("RGB")
    photo = cache[path]
    aspects, probs = zip(*ASPECTS)
    ar = aspects[rng.choice(len(aspects), p=np.array(probs) / sum(probs))]
    long_side = int(rng.integers(size_min, size_max + 1))
    w, h = (long_side, int(round(long_side / ar))) if ar >= 1 else (int(round(long_side * ar)), long_side)
    pw, ph = photo.size
    frac = rng.uniform(0.35, 1.0)
    cw = min(pw, ph * w / h) * frac
    ch = cw * h / w
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    im = photo.resize((w, h), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.85, 1.15))
    return im


def prepare_cutout(path, rng, area, img_size, cache):
    """Load, jitter, flip, rotate and scale a cut-out so its opaque area is ~area pixels: RGBA image."""
    if path not in cache:
        cache[path] = Image.open(path).convert("RGBA")
    im = cache[path]
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    rgb, a = im.convert("RGB"), im.getchannel("A")
    rgb = ImageEnhance.Brightness(rgb).enhance(rng.uniform(0.8, 1.15))
    rgb = ImageEnhance.Contrast(rgb).enhance(rng.uniform(0.8, 1.15))
    rgb = ImageEnhance.Color(rgb).enhance(rng.uniform(0.75, 1.15))
    im = rgb.copy()
    im.putalpha(a)
    angle = rng.uniform(-12, 12)
    im = im.rotate(angle, resample=Image.BICUBIC, expand=True)
    opaque = max(1.0, float((np.asarray(im.getchannel("A")) > 127).sum()))
    s = math.sqrt(area / opaque)
    w, h = img_size
    s = min(s, 0.95 * w / im.width, 0.95 * h / im.height)
    nw, nh = max(8, int(im.width * s)), max(8, int(im.height * s))
    im = im.resize((nw, nh), Image.LANCZOS if s < 1 else Image.BICUBIC)
    if rng.random() < 0.5:  # slightly soft edge
        im.putalpha(im.getchannel("A").filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0))))
    return im


def paste(canvas, cut, xy, rng):
    """Alpha-composite an RGBA cut-out onto the float canvas (H, W, 3) at xy; returns its (H, W) alpha layer."""
    h, w = canvas.shape[:2]
    layer = np.zeros((h, w), np.float32)
    x, y = xy
    a = np.asarray(cut.getchannel("A"), np.float32) / 255.0
    rgb = np.asarray(cut.convert("RGB"), np.float32)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + cut.width), min(h, y + cut.height)
    if x1 <= x0 or y1 <= y0:
        return layer
    sa = a[y0 - y:y1 - y, x0 - x:x1 - x]
    layer[y0:y1, x0:x1] = sa
    region = canvas[y0:y1, x0:x1]
    # pull the cut-out a little towards the local photo colour so it sits in the scene
    tint = rng.uniform(0.0, 0.15)
    mean = region.reshape(-1, 3).mean(0)
    src = rgb[y0 - y:y1 - y, x0 - x:x1 - x] * (1 - tint) + mean * tint
    if rng.random() < 0.5:  # soft drop shadow
        sh = Image.fromarray((layer * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(3, 8)))
        dx, dy = int(rng.integers(-6, 7)), int(rng.integers(2, 9))
        sh = np.roll(np.roll(np.asarray(sh, np.float32) / 255.0, dy, 0), dx, 1)
        canvas *= (1 - 0.45 * sh)[..., None]
        region = canvas[y0:y1, x0:x1]
    region[:] = region * (1 - sa[..., None]) + src * sa[..., None]
    return layer


def place(rng, cut, w, h):
    """Top-left corner for a cut-out: inside the image, or truncated by up to 30 % with probability 0.2."""
    if rng.random() < 0.2:
        mx, my = int(0.3 * cut.width), int(0.3 * cut.height)
    else:
        mx = my = 0
    x = int(rng.integers(-mx, max(-mx + 1, w - cut.width + mx + 1)))
    y = int(rng.integers(-my, max(-my + 1, h - cut.height + my + 1)))
    return x, y


def compose(rng, mat, deck, size_min, size_max, caches):
    """One scene: (RGB image, uint8 label map with 255 band, list of objects {name, box, truncated})."""
    bg_cache, cut_cache = caches
    img = background(mat["_bg"][int(rng.integers(len(mat["_bg"])))], rng, size_min, size_max, bg_cache)
    w, h = img.size
    canvas = np.asarray(img, np.float32).copy()
    n_cls = int(rng.choice([1, 2, 3], p=[0.5, 0.33, 0.17]))
    classes = []
    while len(classes) < n_cls:
        if not deck:
            deck.extend(rng.permutation([c for c in VOC_CLASSES if c in mat]).tolist())
        c = deck.pop()
        if c in classes:
            deck.insert(0, c)
            if len(set(deck)) <= len(classes):
                break
            continue
        classes.append(c)
    n_inst = max(len(classes), int(rng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.15, 0.1])))
    instances = classes + [classes[int(rng.integers(len(classes)))] for _ in range(n_inst - len(classes))]
    instances = [instances[i] for i in rng.permutation(len(instances))]
    n_clutter = int(rng.choice([0, 1, 2, 3], p=[0.2, 0.35, 0.3, 0.15])) if CLUTTER in mat else 0
    layers = [("obj", c) for c in instances]
    for _ in range(n_clutter):  # distractors go anywhere in the stack, under or over the objects
        layers.insert(int(rng.integers(len(layers) + 1)), ("clutter", None))
    inst_id = np.zeros((h, w), np.int32)  # 0 background / clutter, k object k (1-based, topmost wins)
    top_alpha = np.zeros((h, w), np.float32)
    objects = []
    for kind, cls in layers:
        if kind == "obj":
            files = mat[cls]
            area = w * h * float(np.exp(rng.uniform(np.log(0.05), np.log(0.5)))) / max(1, n_inst) ** 0.5
        else:
            files = mat[CLUTTER]
            area = w * h * rng.uniform(0.02, 0.12)
        path = files[int(rng.integers(len(files)))]
        cut = prepare_cutout(path, rng, area, (w, h), cut_cache)
        layer = paste(canvas, cut, place(rng, cut, w, h), rng)
        cover = layer >= 0.5
        if kind == "obj":
            objects.append({"name": cls, "art": os.path.basename(path)})
            inst_id[cover] = len(objects)
        else:
            inst_id[cover] = 0
        top_alpha = np.where(layer > 0.02, layer, top_alpha)
    label = np.zeros((h, w), np.uint8)
    cls_of = np.array([0] + [VOC_CLASSES.index(o["name"]) + 1 for o in objects], np.uint8)
    label[:] = cls_of[inst_id]
    # void: a ~2 px band along every object boundary, and the semi-transparent rim under an object's edge
    ids = Image.fromarray(inst_id.astype(np.uint8))
    band = np.asarray(ids.filter(ImageFilter.MaxFilter(3))) != np.asarray(ids.filter(ImageFilter.MinFilter(3)))
    soft = (top_alpha > 0.05) & (top_alpha < 0.95) & (
        np.asarray(ids.filter(ImageFilter.MaxFilter(5))) > 0)
    label[band | soft] = IGNORE
    kept = []
    for k, o in enumerate(objects, 1):
        ys, xs = np.nonzero(inst_id == k)
        if len(xs) < 0.01 * w * h * 0.25 or len(xs) < 64:  # almost hidden: make it void, leave it out
            label[inst_id == k] = IGNORE
            continue
        o["box"] = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        o["truncated"] = int(xs.min() == 0 or ys.min() == 0 or xs.max() == w - 1 or ys.max() == h - 1)
        kept.append(o)
    jpg = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return jpg, label, kept


def voc_xml(name, size, objects):
    """VOC annotation XML for one image as a string."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = name + ".jpg"
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "affinitynet photo scenes"
    sz = ET.SubElement(root, "size")
    for k, v in zip(("width", "height", "depth"), (size[0], size[1], 3)):
        ET.SubElement(sz, k).text = str(v)
    ET.SubElement(root, "segmented").text = "1"
    for o in objects:
        ob = ET.SubElement(root, "object")
        ET.SubElement(ob, "name").text = o["name"]
        ET.SubElement(ob, "pose").text = "Unspecified"
        ET.SubElement(ob, "truncated").text = str(o["truncated"])
        ET.SubElement(ob, "difficult").text = "0"
        bb = ET.SubElement(ob, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), o["box"]):
            ET.SubElement(bb, k).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def generate(out, art, backgrounds, train=1000, val=200, seed=0, size_min=300, size_max=500):
    """Write the VOC-layout set into out and return its statistics dict (also saved as out/stats.json)."""
    material = load_material(art, backgrounds, seed)
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    palette = voc_palette()
    caches = ({}, {})
    stats = {"seed": seed, "size": [size_min, size_max], "splits": {}}
    index = 0
    for split, n in (("train", train), ("val", val)):
        mat = material[split]
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        deck = []
        names = []
        img_counts = {c: 0 for c in VOC_CLASSES}
        inst_counts = {c: 0 for c in VOC_CLASSES}
        n_obj = fg = void = 0.0
        for _ in range(n):
            index += 1
            name = f"2026_{index:06d}"
            objects = []
            while not objects:
                img, label, objects = compose(rng, mat, deck, size_min, size_max, caches)
            img.save(os.path.join(out, "JPEGImages", name + ".jpg"), quality=90)
            m = Image.fromarray(label, "P")
            m.putpalette(palette)
            m.save(os.path.join(out, "SegmentationClass", name + ".png"))
            with open(os.path.join(out, "Annotations", name + ".xml"), "w") as fh:
                fh.write(voc_xml(name, img.size, objects))
            names.append(name)
            for c in {o["name"] for o in objects}:
                img_counts[c] += 1
            for o in objects:
                inst_counts[o["name"]] += 1
            n_obj += len(objects)
            fg += float(((label > 0) & (label < IGNORE)).mean())
            void += float((label == IGNORE).mean())
        with open(os.path.join(out, "ImageSets", "Segmentation", split + ".txt"), "w") as fh:
            fh.write("\n".join(names) + "\n")
        stats["splits"][split] = {
            "images": n, "images_per_class": img_counts, "instances_per_class": inst_counts,
            "mean_objects_per_image": round(n_obj / max(1, n), 3),
            "mean_fg_fraction": round(fg / max(1, n), 4), "mean_void_fraction": round(void / max(1, n), 4),
            "cutouts_per_class": {c: len(mat.get(c, [])) for c in VOC_CLASSES},
            "clutter_cutouts": len(mat.get(CLUTTER, [])),
            "backgrounds": [os.path.basename(b) for b in mat["_bg"]],
        }
    src = os.path.join(art, "sources.json")
    if os.path.exists(src):
        with open(src) as fh:
            stats["sources"] = json.load(fh)
    with open(os.path.join(out, "stats.json"), "w") as fh:
        json.dump(stats, fh, indent=1, sort_keys=True)
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="output folder (VOC layout)")
    p.add_argument("--art", required=True, help="folder of cut-outs: CLASS/*.png and _clutter/*.png")
    p.add_argument("--backgrounds", required=True, help="folder of photographs")
    p.add_argument("--extract", metavar="ROOT", help="fill --art and --backgrounds from packages unpacked under ROOT/PKG")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size-min", type=int, default=300)
    p.add_argument("--size-max", type=int, default=500)
    args = p.parse_args(argv)
    if args.extract:
        if shutil.which("rsvg-convert") is None:
            print("note: rsvg-convert not found, EmojiOne SVGs are skipped (apt-get install librsvg2-bin)")
        res = extract(args.extract, args.art, args.backgrounds)
        print(json.dumps(res["art_counts"], indent=1, sort_keys=True))
        print(f"{len(res['photos'])} photographs")
        return
    if not args.out:
        p.error("give OUT (or --extract ROOT)")
    stats = generate(args.out, args.art, args.backgrounds, args.train, args.val, args.seed,
                     args.size_min, args.size_max)
    for split, s in stats["splits"].items():
        print(split, s["images"], "images,", s["mean_objects_per_image"], "objects/image, fg",
              s["mean_fg_fraction"], "per class:", s["images_per_class"])


if __name__ == "__main__":
    main()
