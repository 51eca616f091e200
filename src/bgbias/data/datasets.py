"""Dataset loaders behind one interface: each format lists (path, class) records, and
`build_index` turns them into a checked, class-disjoint train/val/test index.

Formats (DESIGN.md section 2 for the paper's splits):
- cars196: `cars_annos.mat` + `car_ims/`
- cub200:  the `CUB_200_2011/` folder (images.txt, image_class_labels.txt, classes.txt, images/)
- sop:     `Ebay_train.txt` / `Ebay_test.txt` (train file split into train/val by class id)
- folder:  one subfolder per class
- csv:     a `path,label[,split]` file (paths relative to the dataset root)
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import posixpath
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image
from tqdm import tqdm

from bgbias.core.config import DatasetConfig, IndexConfig
from bgbias.core.images import is_image_file, to_rgb
from bgbias.masks.compute import mask_name
from bgbias.core.errors import BgbiasError
from bgbias.core.files import write_json, write_text

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image as a loader lists it, before checks. `split` is set by formats that fix it."""

    path: str  # relative to the dataset root, with '/' separators
    class_id: int  # 1-based
    class_name: str
    split: str | None = None
    # Where it was listed, relative to the root: 'labels.csv:3', 'cars_annos.mat (annotation 3)',
    # or the file itself (folder format); error messages and the index summary name it.
    source: str = ""


@dataclass(frozen=True)
class Sample:
    path: str
    class_id: int
    class_name: str
    split: str
    # Content hash of the image file: the index (and so every stage after it) changes
    # when an image changes, even if its path does not (e.g. a re-rendered synthetic set).
    sha1: str = ""


@dataclass
class DatasetIndex:
    root: Path
    samples: list[Sample]
    dropped_classes: list[dict] = field(default_factory=list)
    skipped_images: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def summary(self) -> dict:
        per_split = {
            name: {"images": len(items), "classes": len({s.class_id for s in items})}
            for name in SPLITS
            for items in [self.split(name)]
        }
        # No absolute paths: the file must be identical in every clone (it is a DVC output).
        return {
            "splits": per_split,
            "dropped_classes": self.dropped_classes,
            "skipped_images": self.skipped_images,
            "duplicates": self.duplicates,
        }

    def write(self, csv_path: Path) -> None:
        rows = ["path,class_id,class_name,split,sha1"]
        rows += [_csv_line([s.path, s.class_id, s.class_name, s.split, s.sha1]) for s in self.samples]
        write_text(csv_path, "\n".join(rows) + "\n")
        write_json(csv_path.with_suffix(".json"), self.summary())

    @classmethod
    def read(cls, csv_path: Path, root: Path) -> DatasetIndex:
        if not csv_path.is_file():
            raise BgbiasError(f"dataset index not found: {csv_path} (run `dvc repro index` first)")
        reader = csv.DictReader(io.StringIO(_read_text(csv_path), newline=""))
        samples = []
        try:
            for r in reader:
                where = f"{csv_path}:{reader.line_num}"
                if r.get("split") not in SPLITS or None in (r.get("path"), r.get("class_name")):
                    raise ValueError
                samples.append(Sample(_relative(r["path"], where), int(r["class_id"]), r["class_name"], r["split"],
                                      r.get("sha1") or ""))
        except (ValueError, TypeError, csv.Error):
            raise BgbiasError(f"{csv_path}:{reader.line_num}: not a row of a dataset index "
                              "(path,class_id,class_name,split,sha1); run `dvc repro index` again") from None
        return cls(root=root, samples=samples)


def _csv_line(values: Iterable) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BgbiasError(f"missing {what}: {path}")
    return path


def _read_text(path: Path) -> str:
    """A text index file; bytes that are not UTF-8 are an error naming the line (a BOM is dropped)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BgbiasError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                          "save the file as UTF-8") from None


def _read_table(path: Path, what: str) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of a CUB/SOP index file, blank lines ignored."""
    lines = _read_text(_require_file(path, what)).splitlines()
    return [(n, line.split()) for n, line in enumerate(lines, start=1) if line.strip()]


def _relative(path: str, where: str) -> str:
    """`path` normalised ('a/./b' -> 'a/b'); absolute paths and paths leaving the root
    ('../x') are refused: a mask is written at the same relative path under its folder."""
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).anchor:
        raise BgbiasError(f"{where}: {path!r} is an absolute path; paths must be relative to the dataset root")
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise BgbiasError(f"{where}: {path!r} is outside the dataset root")
    return normal


# ---- loaders: DatasetConfig -> records ---------------------------------------------------


def load_cars196(cfg: DatasetConfig) -> list[Record]:
    from scipy.io import loadmat

    mat_path = _require_file(cfg.root / "cars_annos.mat", "Cars196 annotation file")
    try:
        mat = loadmat(mat_path, squeeze_me=True)
    except Exception as exc:  # scipy raises several types for a bad file
        raise BgbiasError(f"{mat_path}: cannot read Cars196 annotations ({exc})") from None
    if "annotations" not in mat:
        raise BgbiasError(f"{mat_path}: no 'annotations' variable (not a cars_annos.mat?)")
    names = [str(n) for n in mat["class_names"]] if "class_names" in mat else []
    records = []
    annotations = mat["annotations"].ravel() if mat["annotations"].ndim else [mat["annotations"].item()]
    for number, ann in enumerate(annotations, start=1):
        source = f"{mat_path.name} (annotation {number})"
        try:
            class_id, path = int(ann["class"]), str(ann["relative_im_path"])
        except (ValueError, TypeError, KeyError, IndexError):
            raise BgbiasError(f"{cfg.root / source}: expected fields relative_im_path and class") from None
        name = names[class_id - 1] if 0 < class_id <= len(names) else str(class_id)
        records.append(Record(path, class_id, name, source=source))
    return records


def _cub_table(path: Path, what: str, columns: str, parse: Callable[[list[str]], tuple]) -> list[tuple]:
    """(line number, *parsed fields) per row; a row that does not parse names its line."""
    rows = []
    for line_no, fields in _read_table(path, what):
        try:
            rows.append((line_no, *parse(fields)))
        except (IndexError, ValueError):
            raise BgbiasError(f"{path}:{line_no}: expected '{columns}'") from None
    return rows


def load_cub200(cfg: DatasetConfig) -> list[Record]:
    root = cfg.root
    images = {img_id: (n, rel) for n, img_id, rel in
              _cub_table(root / "images.txt", "CUB index file", "image_id path", lambda f: (f[0], f[1]))}
    labels = {img_id: c for _, img_id, c in _cub_table(root / "image_class_labels.txt", "CUB label file",
                                                       "image_id class_id", lambda f: (f[0], int(f[1])))}
    names = {}
    if (root / "classes.txt").is_file():
        names = {c: name for _, c, name in _cub_table(root / "classes.txt", "CUB class file", "class_id name",
                                                      lambda f: (int(f[0]), f[1]))}
    missing = [img_id for img_id in images if img_id not in labels]
    if missing:
        raise BgbiasError(f"{root / 'image_class_labels.txt'}: no label for image id {missing[0]}")
    return [
        Record(f"images/{rel}", labels[img_id], names.get(labels[img_id], str(labels[img_id])),
               source=f"images.txt:{line_no}")
        for img_id, (line_no, rel) in images.items()
    ]


def _sop_file(path: Path) -> list[tuple[int, int, str]]:
    """(line number, class id, path) per row."""
    rows = _read_table(path, "SOP index file")
    if not rows or rows[0][1][:2] != ["image_id", "class_id"]:
        raise BgbiasError(f"{path}: expected header 'image_id class_id super_class_id path'")
    out = []
    for line_no, r in rows[1:]:
        try:
            out.append((line_no, int(r[1]), r[3]))
        except (IndexError, ValueError):
            raise BgbiasError(f"{path}:{line_no}: malformed row "
                              "(expected 'image_id class_id super_class_id path')") from None
    return out


def load_sop(cfg: DatasetConfig) -> list[Record]:
    split = cfg.effective_split()
    records = []
    for name in ("Ebay_train.txt", "Ebay_test.txt"):
        for line_no, class_id, rel in _sop_file(cfg.root / name):
            records.append(Record(rel, class_id, rel.split("/")[-1].rsplit("_", 1)[0],
                                  "test" if name == "Ebay_test.txt" else split.split_of(class_id),
                                  source=f"{name}:{line_no}"))
    return records


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _ranked(names: Iterable[str]) -> dict[str, int]:
    return {name: rank for rank, name in enumerate(sorted(set(names), key=_natural_key), start=1)}


def load_folder(cfg: DatasetConfig) -> list[Record]:
    if not cfg.root.is_dir():
        raise BgbiasError(f"dataset root not found: {cfg.root}")
    files = sorted(p for p in cfg.root.rglob("*") if p.is_file() and is_image_file(p))
    pairs = [(p.relative_to(cfg.root).as_posix(), p.relative_to(cfg.root).parts[0]) for p in files]
    pairs = [(rel, cls) for rel, cls in pairs if "/" in rel]  # images directly in root have no class
    ids = _ranked(cls for _, cls in pairs)
    return [Record(rel, ids[cls], cls, source=rel) for rel, cls in pairs]


def load_csv(cfg: DatasetConfig) -> list[Record]:
    path = _require_file(cfg.root / cfg.index_file, "csv index file")
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    rows = []
    try:
        columns = set(reader.fieldnames or [])
        if not {"path", "label"} <= columns:
            raise BgbiasError(f"{path}: needs columns 'path' and 'label' (has {sorted(columns)})")
        for r in reader:
            if r["path"] is None or r["label"] is None or (r.get("split", "") is None):
                raise BgbiasError(f"{path}:{reader.line_num}: expected path,label[,split] "
                                  f"(the row has {len([v for v in r.values() if v is not None])} field(s))")
            rows.append((reader.line_num, r))
    except csv.Error as exc:
        raise BgbiasError(f"{path}:{reader.line_num}: not a CSV row ({exc})") from None
    ids = _ranked(r["label"] for _, r in rows)
    has_split = "split" in columns and cfg.class_split is None
    records = []
    for line_no, r in rows:
        split = r["split"].strip() if has_split else None
        if has_split and split not in SPLITS:
            raise BgbiasError(f"{path}:{line_no}: split must be one of {', '.join(SPLITS)} (got {split!r})")
        records.append(Record(r["path"], ids[r["label"]], r["label"], split, source=f"{cfg.index_file}:{line_no}"))
    return records


LOADERS: dict[str, Callable[[DatasetConfig], list[Record]]] = {
    "cars196": load_cars196,
    "cub200": load_cub200,
    "sop": load_sop,
    "folder": load_folder,
    "csv": load_csv,
}


# ---- checks --------------------------------------------------------------------------------


def _safe_paths(records: list[Record], root: Path) -> list[Record]:
    """Records with normalised paths, each naming a file inside `root` (symbolic links
    resolved); anything else is refused, naming the index file and line."""
    real_root = root.resolve()
    out = []
    for r in records:
        where = root / r.source if r.source else root
        try:
            r.path.encode("utf-8")
        except UnicodeEncodeError:  # a file name with bytes that are not UTF-8 (surrogate escapes)
            raise BgbiasError(f"{where}: the file name is not valid UTF-8 ({r.path!r}); rename it") from None
        path = _relative(r.path, str(where))
        if not (root / path).resolve().is_relative_to(real_root):
            raise BgbiasError(f"{where}: {path!r} resolves outside the dataset root {root} (a symbolic link?)")
        out.append(replace(r, path=path))
    return out


def _without_duplicates(records: list[Record], policy: IndexConfig, root: Path) -> tuple[list[Record], list[dict]]:
    """A path listed more than once (the same image twice, or with two labels) fails; with
    `on_duplicate: drop` only its first row is kept, or none if the rows' labels differ."""
    rows: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        rows[r.path].append(r)
    duplicates, dropped = [], set()
    for path, listed in rows.items():
        if len(listed) == 1:
            continue
        first = listed[0]
        agree = all((r.class_id, r.split) == (first.class_id, first.split) for r in listed)
        if policy.on_duplicate == "fail":
            other = next(r for r in listed[1:] if agree or (r.class_id, r.split) != (first.class_id, first.split))
            what = (f"is listed again (first at {first.source})" if agree else
                    f"is labelled {_label(other)} but {_label(first)} at {first.source}")
            raise BgbiasError(f"{root / other.source}: {path!r} {what}; "
                              "set index.on_duplicate: drop to drop repeated rows")
        duplicates.append({"path": path, "labels": sorted({r.class_name for r in listed}),
                           "rows": [r.source for r in listed], "kept": first.source if agree else None})
        drop = listed[1:] if agree else listed
        dropped.update(id(r) for r in drop)
        log.warning("dropping %d row(s) of %s, listed %d times%s", len(drop), path, len(listed),
                    "" if agree else " with different labels")
    return [r for r in records if id(r) not in dropped], duplicates


def _label(r: Record) -> str:
    return f"class {r.class_id} ({r.class_name!r}{', ' + r.split if r.split else ''})"


def _check_mask_names(records: list[Record], root: Path) -> None:
    """Masks are named after the image with the extension .png: 'a/x.jpg' and 'a/x.png'
    would share one, so such a pair is refused."""
    seen: dict[str, Record] = {}
    for r in records:
        other = seen.setdefault(mask_name(r.path), r)
        if other is not r:
            raise BgbiasError(f"{root / r.source}: {r.path!r} and {other.path!r} ({other.source}) would share the "
                              f"mask {mask_name(r.path)!r}; rename one of them")


def _assign_splits(records: list[Record], cfg: DatasetConfig, name: str) -> list[Record]:
    if all(r.split is not None for r in records):
        # A class must not appear in two splits: retrieval splits are class-disjoint.
        splits_of = defaultdict(set)
        for r in records:
            splits_of[r.class_id].add(r.split)
        shared = [c for c, s in splits_of.items() if len(s) > 1]
        if shared and cfg.format == "csv":
            raise BgbiasError(f"dataset '{name}': class '{shared[0]}' appears in several splits")
        return records
    split = cfg.effective_split()
    if split is None:
        raise BgbiasError(f"datasets.{name}.class_split is required for format '{cfg.format}' "
                          "(e.g. {train: {first: 1, last: 50}, val: ..., test: ...})")
    out = [replace(r, split=r.split or split.split_of(r.class_id)) for r in records]
    return [r for r in out if r.split is not None]  # classes outside every range are not used


def _inspect(path: Path) -> tuple[str | None, str]:
    """(decode error or None, sha1 of the file's bytes)."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at reduced size, still reads every byte
            image.load()
            to_rgb(image)
    except Exception as exc:  # PIL raises many types for bad files
        return f"{type(exc).__name__}: {exc}", ""
    return None, hashlib.sha1(data).hexdigest()


def _check_decodable(root: Path, records: list[Record], workers: int) -> tuple[dict[str, str], dict[str, str]]:
    """(errors by path, sha1 by path)."""
    paths = [root / r.path for r in records]
    desc = "checking images"
    if workers > 1 and len(paths) > 64:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_inspect, paths, chunksize=64), total=len(paths), desc=desc))
    else:
        results = [_inspect(p) for p in tqdm(paths, desc=desc, disable=len(paths) < 64)]
    errors = {r.path: e for r, (e, _) in zip(records, results) if e is not None}
    return errors, {r.path: h for r, (_, h) in zip(records, results)}


def build_index(cfg: DatasetConfig, policy: IndexConfig, name: str) -> DatasetIndex:
    """List, split and check a dataset; bad inputs fail or are skipped and reported, per `policy`."""
    if not cfg.root.exists():
        raise BgbiasError(f"datasets.{name}.root not found: {cfg.root}")
    records, duplicates = _without_duplicates(_safe_paths(LOADERS[cfg.format](cfg), cfg.root), policy, cfg.root)
    _check_mask_names(records, cfg.root)
    records = _assign_splits(records, cfg, name)
    if not records:
        raise BgbiasError(f"dataset '{name}' at {cfg.root}: no images listed")

    missing = [r.path for r in records if not (cfg.root / r.path).is_file()]
    if missing:
        raise BgbiasError(f"dataset '{name}': image listed but not found: {cfg.root / missing[0]}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    bad, hashes = _check_decodable(cfg.root, records, policy.workers)
    if bad and policy.on_corrupt_image == "fail":
        path, err = next(iter(bad.items()))
        raise BgbiasError(f"cannot decode image {cfg.root / path} ({err}); "
                          "set index.on_corrupt_image: skip to skip such images")
    skipped = [{"path": p, "error": e} for p, e in sorted(bad.items())]
    for item in skipped:
        log.warning("skipping undecodable image %s (%s)", item["path"], item["error"])
    records = [r for r in records if r.path not in bad]

    counts = Counter(r.class_id for r in records)
    small = sorted(c for c, n in counts.items() if n < policy.min_images_per_class)
    names = {r.class_id: r.class_name for r in records}
    if small and policy.on_small_class == "fail":
        c = small[0]
        raise BgbiasError(f"dataset '{name}': class '{names[c]}' has {counts[c]} image(s), retrieval needs "
                          f">= {policy.min_images_per_class}; set index.on_small_class: drop to drop it")
    dropped = [{"class_id": c, "class_name": names[c], "images": counts[c]} for c in small]
    for item in dropped:
        log.warning("dropping class %s with %d image(s)", item["class_name"], item["images"])
    records = [r for r in records if counts[r.class_id] >= policy.min_images_per_class]

    samples = [Sample(r.path, r.class_id, r.class_name, r.split, hashes[r.path]) for r in records]
    return DatasetIndex(root=cfg.root, samples=samples, dropped_classes=dropped, skipped_images=skipped,
                        duplicates=duplicates)
