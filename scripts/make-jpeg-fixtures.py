#!/usr/bin/env python3
"""Writes fixtures/jpeg/: small JPEGs of the kinds the golden photos do not cover (progressive,
4:2:2, odd sizes, grey, CMYK, RGB colour space, a file libjpeg-turbo warns about, and one it
refuses after a warning), with what Pillow makes of each in fixtures/jpeg/pillow.json.

For every file Pillow decodes, pillow.json holds the sha256 of `Image.open(f).convert('RGB')`
(the full-size RGB the service must reproduce) and of its NEAREST and BILINEAR 224x224 resizes,
as in golden.json; for the file Pillow refuses, the error. The service checks its decoder against
these figures (src/classify/image/jpeg.rs), so they come from Pillow, not from our code.
Needs Pillow (`pip install pillow==13.0.0`, whose libjpeg-turbo the golden photos were decoded
with); run from the repository root:
    python3 scripts/make-jpeg-fixtures.py
"""
import hashlib
import io
import json
import math
from pathlib import Path

import PIL
from PIL import Image, features

OUT = Path("fixtures/jpeg")


def scene(width, height):
    """Smooth gradients, hard coloured edges and fine noise: what chroma upsampling and the IDCT
    round differently in other decoders."""
    img = Image.new("RGB", (width, height))
    px = img.load()
    state = width * 1_000_003 + height
    for y in range(height):
        for x in range(width):
            state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
            noise = (state >> 58) - 32
            r = int(127 + 120 * math.sin(x / 17.0) * math.cos(y / 23.0))
            g = (x * 255) // max(width - 1, 1)
            b = (y * 255) // max(height - 1, 1)
            if (x // 24 + y // 24) % 5 == 0:  # saturated blocks with sharp edges
                r, g, b = 230, 20, 200
            if (x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 4) ** 2:
                r, g, b = 255 - g, 40, 255 - r
            px[x, y] = tuple(max(0, min(255, v + noise // 4)) for v in (r, g, b))
    return img


def encode(img, **options):
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def segments(jpeg):
    """(offset, marker) of every marker segment before the first scan's data, and the SOS ones."""
    at, found = 2, []
    while at < len(jpeg):
        marker = jpeg[at + 1]
        length = int.from_bytes(jpeg[at + 2 : at + 4], "big")
        found.append((at, marker))
        if marker == 0xDA:
            # Skip the entropy-coded data: up to the next 0xFF not followed by 0 or RSTn.
            at += 2 + length
            while not (jpeg[at] == 0xFF and jpeg[at + 1] not in (0, *range(0xD0, 0xD8))):
                at += 1
            if jpeg[at + 1] == 0xD9:
                break
            continue
        at += 2 + length
    return found


def with_junk_before_eoi(jpeg):
    """Eight bytes of garbage between the scan data and EOI: libjpeg-turbo warns ("Corrupt JPEG
    data: 8 extraneous bytes before marker 0xd9") and decodes the image whole."""
    assert jpeg[-2:] == b"\xff\xd9"
    return jpeg[:-2] + b"\x12\x34\x56\x78\x9a\xbc\xde\xf0" + jpeg[-2:]


def warning_then_fatal(progressive):
    """A progressive file with a warning in its first scan's data (junk before the second SOS)
    and a fatal error after it (the last scan's spectral selection made impossible): Pillow
    refuses it, and so must we, although TurboJPEG then still reports only a warning."""
    scans = [at for at, marker in segments(progressive) if marker == 0xDA]
    assert len(scans) > 2, "progressive files have several scans"
    last = scans[-1]
    components = progressive[last + 4]
    ss = last + 5 + 2 * components  # Ss, then Se, then Ah/Al
    broken = bytearray(progressive)
    broken[ss] = 0  # with Se > 0 on an AC scan: a DC scan that also codes AC, invalid
    broken[ss + 1] = 63
    second = scans[1]
    return bytes(broken[:second]) + b"\x00\x11\x22\x33" + bytes(broken[second:])


def pillow_figures(jpeg):
    try:
        img = Image.open(io.BytesIO(jpeg))
        mode = img.mode
        rgb = img.convert("RGB")
    except OSError as e:
        return {"error": str(e)}
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    return {
        "mode": mode,
        "width": rgb.width,
        "height": rgb.height,
        "rgb_sha256": sha(rgb.tobytes()),
        "pil_nearest": sha(rgb.resize((224, 224), Image.NEAREST).tobytes()),
        "pil_bilinear": sha(rgb.resize((224, 224), Image.BILINEAR).tobytes()),
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    photo = scene(320, 240)
    odd = scene(333, 251)
    progressive = encode(photo, progressive=True, subsampling=2)
    files = {
        "progressive-420.jpg": progressive,
        "baseline-422.jpg": encode(photo, subsampling=1),
        "odd-size-420.jpg": encode(odd, subsampling=2),
        "odd-size-progressive-444.jpg": encode(odd, progressive=True, subsampling=0),
        "grey.jpg": encode(photo.convert("L")),
        "cmyk.jpg": encode(photo.convert("CMYK")),
        "rgb-colour-space.jpg": encode(photo, keep_rgb=True, subsampling=0),
        "warning-extraneous-bytes.jpg": with_junk_before_eoi(encode(photo, subsampling=2)),
        "fatal-after-warning.jpg": warning_then_fatal(progressive),
    }
    figures = {}
    for name, jpeg in files.items():
        (OUT / name).write_bytes(jpeg)
        figures[name] = pillow_figures(jpeg)
        print(name, len(jpeg), figures[name].get("mode", figures[name].get("error")))
    assert "error" in figures["fatal-after-warning.jpg"], "Pillow must refuse it"
    assert all("error" not in f for n, f in figures.items() if n != "fatal-after-warning.jpg")
    meta = {
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version_feature("libjpeg_turbo"),
        "made_by": "scripts/make-jpeg-fixtures.py",
    }
    doc = {"generated_with": meta, "images": figures}
    (OUT / "pillow.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
