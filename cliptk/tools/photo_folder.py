"""A small folder-per-identity dataset cut from real photographs, for CI and for trying things.

scikit-image ships a few photographs (``skimage.data``: astronaut, coffee, chelsea, rocket, ...).
:func:`write_photo_folder` cuts each into vertical strips (one identity per strip) and writes a few
jittered crops of each (shifted, scaled, mirrored, brightened) as mixed JPEG and PNG files in mixed
image modes (RGB, greyscale ``L``, ``RGBA``, palette ``P``, 16-bit greyscale): the layout of a
user's own crops, with no captions, no cameras and no query/gallery split.

    python -m cliptk.tools.photo_folder /tmp/photos      # then: python -m cliptk demo --data /tmp/photos

Needs scikit-image (in the ``dev`` extra).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

__all__ = ["write_photo_folder", "PHOTOS"]

#: scikit-image photographs bundled with the package (no download)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel",
          "camera", "coins", "moon", "brick", "clock", "logo")
_MODES = ("RGB", "L", "RGBA", "P", "I;16")


def _photo(name: str) -> Image.Image:
    from skimage import data

    a = getattr(data, name)()
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    return Image.fromarray(a)


def write_photo_folder(root: str | os.PathLike, *, strips: int = 2, images_per_id: int = 4,
                       size: tuple[int, int] = (96, 192), photos: tuple[str, ...] = PHOTOS, seed: int = 0) -> Path:
    """Write ``len(photos) * strips`` identities of ``images_per_id`` crops each under ``root``
    (``root/<photo>_<strip>/<k>.jpg|png``); idempotent for the same arguments.

    Args:
        size: (width, height) of each crop, portrait like a person crop.

    Returns:
        ``root``.

    Example:
        >>> import tempfile, cliptk as ct
        >>> root = write_photo_folder(tempfile.mkdtemp(), photos=("astronaut", "camera"), images_per_id=3)
        >>> ds = ct.read_folder(root)
        >>> len(ds), len(set(ds.pids)), ds.has_cameras, ds.captions[0]
        (12, 4, False, None)
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    w, h = size
    k_mode = 0
    for name in photos:
        img = _photo(name)
        base = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else ("L" if img.mode == "L" else "RGB"))
        W, H = base.size
        sw = W / strips
        for s in range(strips):
            folder = root / f"{name}_{s}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(images_per_id):
                scale = rng.uniform(0.85, 1.0)
                cw, ch = sw * scale, min(H, sw * scale * h / w) * rng.uniform(0.9, 1.0)
                x0 = s * sw + rng.uniform(0, sw - cw)
                y0 = rng.uniform(0, max(H - ch, 0))
                crop = base.crop((int(x0), int(y0), int(x0 + cw), int(y0 + ch))).resize((w, h), Image.Resampling.BILINEAR)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                crop = ImageEnhance.Brightness(crop.convert("RGB") if crop.mode == "RGBA" else crop).enhance(
                    rng.uniform(0.8, 1.2)) if crop.mode != "RGBA" else crop
                mode = _MODES[k_mode % len(_MODES)]
                k_mode += 1
                if mode == "I;16":
                    out = Image.fromarray((np.asarray(crop.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
                    out.save(folder / f"{k}.png")
                elif mode == "RGBA":
                    crop.convert("RGBA").save(folder / f"{k}.png")
                elif mode == "P":
                    crop.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(folder / f"{k}.png")
                else:  # RGB and L as JPEG
                    crop.convert(mode).save(folder / f"{k}.jpg", quality=90)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--strips", type=int, default=2)
    ap.add_argument("--images-per-id", type=int, default=4)
    args = ap.parse_args(argv)
    root = write_photo_folder(args.root, strips=args.strips, images_per_id=args.images_per_id)
    print(f"wrote {sum(1 for _ in root.rglob('*.*'))} images of {len(PHOTOS) * args.strips} identities under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
