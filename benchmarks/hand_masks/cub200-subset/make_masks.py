"""Rebuild masks/ from polygons.json (hand-drawn bird outlines on CUB-200 photos).

usage: python make_masks.py CUB_IMAGES_ROOT [--images-out DIR]
  CUB_IMAGES_ROOT  folder holding <class dir>/<file>.jpg (e.g. .../CUB_200_2011/images)
  --images-out DIR also copy the labelled photos there, same layout, to feed `bgbias masks`
"""
import argparse, json, shutil
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent

ap = argparse.ArgumentParser()
ap.add_argument("images_root", type=Path)
ap.add_argument("--images-out", type=Path)
args = ap.parse_args()
for rel, poly in json.loads((HERE / "polygons.json").read_text()).items():
    src = args.images_root / rel
    with Image.open(src) as im:
        size = im.size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in poly], fill=255)
    out = HERE / "masks" / Path(rel).with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    mask.save(out)
    if args.images_out:
        (args.images_out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, args.images_out / rel)
    print(f"{out.relative_to(HERE)}  {size[0]}x{size[1]}  foreground {sum(mask.histogram()[255:]) / (size[0] * size[1]):.3f}")
