"""The folder benchmarks/gpu_checks.sh runs on: a few classes of the real-photo CUB subset
beside the repo, a few Unsplash backgrounds and a params file, small enough to travel to a
GPU machine with the repo (the README's GPU figures came from the defaults below).

    python benchmarks/gpu_bundle.py .gpu            # then, on the GPU machine:
    bash benchmarks/gpu_checks.sh .gpu/params.yaml
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def copy_cub(source: Path, out: Path, classes: int) -> int:
    """The first `classes` classes of a CUB_200_2011 folder, its list files filtered to them."""
    labels = dict(line.split() for line in (source / "image_class_labels.txt").read_text().splitlines() if line.strip())
    keep = {image for image, label in labels.items() if int(label) <= classes}
    (out / "images").mkdir(parents=True)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt"):
        lines = [line for line in (source / name).read_text().splitlines() if line.strip() and line.split()[0] in keep]
        (out / name).write_text("\n".join(lines) + "\n")
    wanted = [line for line in (source / "classes.txt").read_text().splitlines()
              if line.strip() and int(line.split()[0]) <= classes]
    (out / "classes.txt").write_text("\n".join(wanted) + "\n")
    for line in (out / "images.txt").read_text().splitlines():
        relative = line.split(maxsplit=1)[1]
        (out / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "images" / relative, out / "images" / relative)
    return len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a new folder (inside the repo, ignored by git, to travel with it)")
    parser.add_argument("--cub", type=Path, default=SHARED / "datasets" / "cub200-subset" / "CUB_200_2011")
    parser.add_argument("--backgrounds", type=Path, default=SHARED / "backgrounds" / "unsplash")
    parser.add_argument("--classes", type=int, default=32, help="split 3/4 train, 1/8 val, 1/8 test")
    parser.add_argument("--pool", type=int, nargs=2, default=(16, 4), metavar=("TRAIN", "TEST"),
                        help="background photos taken from val/ and test/")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; give a new folder")
    images = copy_cub(args.cub, args.out / "cub" / "CUB_200_2011", args.classes)
    for subdir, count in zip(("val", "test"), args.pool):
        (args.out / "unsplash" / subdir).mkdir(parents=True)
        for photo in sorted((args.backgrounds / subdir).iterdir())[:count]:
            shutil.copy(photo, args.out / "unsplash" / subdir / photo.name)
    train, val = args.classes * 3 // 4, args.classes * 7 // 8
    params = {
        "dataset": "cub_gpu", "loss": "multi_similarity",
        "assets_dir": str(Path("..") / (REPO / "data" / "assets").relative_to(args.out.resolve().parent)),
        "datasets": {"cub_gpu": {"format": "cub200", "root": "cub/CUB_200_2011", "class_split": {
            "train": {"first": 1, "last": train}, "val": {"first": train + 1, "last": val},
            "test": {"first": val + 1, "last": args.classes}}}},
        "backgrounds": {"source": "unsplash", "train_subdir": "val", "test_subdir": "test", "procedural_per_pool": 0},
        "masks": {"backend": "torch", "batch_size": 64},
        # epochs: the short end-to-end training + evaluation of gpu_checks.sh (the benchmarks set their own sizes)
        "train": {"resize": 256, "crop": 227, "device": "cuda", "epochs": 2},
    }
    (args.out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    print(f"{args.out}: {images} images of {args.classes} classes, backgrounds {args.pool[0]} + {args.pool[1]}")


if __name__ == "__main__":
    main()
