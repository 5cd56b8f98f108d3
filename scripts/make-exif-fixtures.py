#!/usr/bin/env python3
"""Writes fixtures/exif/: a 64x48 image of four coloured quadrants stored as JPEG, PNG (eXIf chunk)
and WebP (EXIF chunk) under each EXIF orientation 1..8, plus files whose EXIF block is damaged.

The stored pixels of `upright-<n>.<ext>` are the upright image turned by the inverse of tag n, so
a viewer that honours the tag shows the same upright image for all eight. Pillow (not the image
crate the service uses) writes them, so the tests check the service against an independent
implementation. Needs Pillow with WebP (`pip install pillow`); run from the repository root:
    python3 scripts/make-exif-fixtures.py
"""
import io
import struct
from pathlib import Path

from PIL import Image, ImageOps

OUT = Path("fixtures/exif")
WIDTH, HEIGHT = 64, 48
# Top left, top right, bottom left, bottom right: far apart, so JPEG loss cannot confuse them.
QUADRANTS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 30)]
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
# What turns the upright image into the stored one for each tag: the inverse of what the tag
# asks a viewer to do (Pillow's ROTATE_* turn counter-clockwise).
T = Image.Transpose
STORE = {
    1: None,
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_90,
    7: T.TRANSVERSE,
    8: T.ROTATE_270,
}


def upright():
    img = Image.new("RGB", (WIDTH, HEIGHT))
    half_w, half_h = WIDTH // 2, HEIGHT // 2
    for i, colour in enumerate(QUADRANTS):
        x, y = (i % 2) * half_w, (i // 2) * half_h
        img.paste(colour, (x, y, x + half_w, y + half_h))
    return img


def tiff_with_orientation(value):
    """A big-endian TIFF header and one IFD holding only Orientation (0x0112, SHORT, 1 value)."""
    return b"MM\0*" + struct.pack(">IHHHIHHI", 8, 1, 0x0112, 3, 1, value, 0, 0)


def save(img, name, fmt, exif):
    options = {"exif": exif}
    if fmt == "JPEG":
        options.update(quality=95, subsampling=0)
    elif fmt == "WEBP":
        options.update(lossless=True)
    img.save(OUT / name, fmt, **options)


def check(name, want):
    """Pillow, honouring the tag, must see `want`."""
    with Image.open(OUT / name) as img:
        seen = ImageOps.exif_transpose(img).convert("RGB")
        assert seen.size == want.size, name
        for i, colour in enumerate(QUADRANTS):
            x = (i % 2) * WIDTH // 2 + WIDTH // 4
            y = (i // 2) * HEIGHT // 2 + HEIGHT // 4
            got = seen.getpixel((x, y))
            assert max(abs(a - b) for a, b in zip(got, colour)) < 12, (name, i, got)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    base = upright()
    for tag, method in STORE.items():
        stored = base if method is None else base.transpose(method)
        exif = b"Exif\0\0" + tiff_with_orientation(tag)
        for ext, fmt in FORMATS.items():
            name = f"upright-{tag}.{ext}"
            save(stored, name, fmt, exif)
            check(name, base)
    # Damaged EXIF blocks: a reader must fall back to orientation 1 (the stored pixels as they are).
    damaged = {
        "garbage": b"Exif\0\0" + b"this is not a TIFF header at all",
        "truncated": b"Exif\0\0" + tiff_with_orientation(6)[:12],
        "value-9": b"Exif\0\0" + tiff_with_orientation(9),
    }
    rotated = base.transpose(T.ROTATE_90)
    for kind, exif in damaged.items():
        for ext, fmt in FORMATS.items():
            save(rotated, f"bad-exif-{kind}.{ext}", fmt, exif)


if __name__ == "__main__":
    main()
