import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from bgbias.core.config import SyntheticClasses, SyntheticConfig
from bgbias.data.synthetic import SUPERSAMPLE, class_specs, generate, home_background, render_image, shape_inside

TINY = SyntheticConfig(classes=SyntheticClasses(train=3, val=2, test=2), images_per_class=3, image_size=32, workers=1)


def digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_worker_independent(tmp_path):
    generate(TINY, 0, tmp_path / "a")
    generate(TINY, 0, tmp_path / "b")
    generate(TINY.model_copy(update={"workers": 2}), 0, tmp_path / "c")
    generate(TINY, 1, tmp_path / "d")
    a = digests(tmp_path / "a")
    assert len(a) == 7 * 3 * 2 + 1  # images + masks + labels.csv
    assert a == digests(tmp_path / "b") == digests(tmp_path / "c")
    assert a != digests(tmp_path / "d")


def test_labels_and_class_disjoint_splits(tmp_path):
    generate(TINY, 0, tmp_path)
    with open(tmp_path / "images" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 21
    split_of = {}
    for r in rows:
        split_of.setdefault(r["label"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert [next(iter(split_of[k])) for k in sorted(split_of)] == ["train"] * 3 + ["val"] * 2 + ["test"] * 2


@pytest.mark.parametrize("corr,expected", [(1.0, 1.0), (0.0, 0.0)])
def test_bg_correlation_extremes(tmp_path, corr, expected):
    summary = generate(TINY.model_copy(update={"bg_correlation": corr}), 0, tmp_path)
    assert summary["home_background_share"] == expected


def test_mask_is_exact_coverage_and_background_untouched():
    cfg = SyntheticConfig(image_size=40, bg_correlation=0.0)
    spec = class_specs(cfg, seed=3)[0]
    image, mask, uses_home = render_image(spec, 0, cfg, 3, home_background(spec, 40, 3))
    assert not uses_home
    m = np.asarray(mask).astype(int)
    # Exact coverage: every value is k/4 of 255, rounded (2x2 supersampling) ...
    assert set(np.unique(m)) <= {0, 64, 128, 191, 255}
    assert (m == 255).sum() > 0 and (m == 0).sum() > 0
    # ... and the image equals the background wherever the object does not reach: rendering the
    # same draw with a shape that covers nothing must give identical pixels there.
    import bgbias.data.synthetic as synthetic

    synthetic._shape_area(spec.shape)  # cached: the pose is drawn with the real shape's area
    original = synthetic.shape_inside
    try:
        synthetic.shape_inside = lambda shape, u, v: np.zeros_like(u, dtype=bool)
        background, empty, _ = render_image(spec, 0, cfg, 3, home_background(spec, 40, 3))
    finally:
        synthetic.shape_inside = original
    assert np.asarray(empty).max() == 0
    outside = m == 0
    assert np.array_equal(np.asarray(image)[outside], np.asarray(background)[outside])
    assert not np.array_equal(np.asarray(image)[m == 255], np.asarray(background)[m == 255])


def test_shape_areas_match_brute_force():
    # circle of radius 1 has area pi; square |u|,|v| <= 0.8 has area 2.56
    g = (np.arange(2000) + 0.5) / 1000 - 1
    u, v = np.meshgrid(g, g)
    assert shape_inside("circle", u, v).mean() * 4 == pytest.approx(np.pi, abs=2e-3)
    assert shape_inside("square", u, v).mean() * 4 == pytest.approx(2.56, abs=2e-3)


def test_images_have_the_configured_size(tmp_path):
    generate(TINY, 0, tmp_path)
    first = next((tmp_path / "images").rglob("*.png"))
    assert Image.open(first).size == (32, 32)
    assert Image.open(tmp_path / "masks" / first.relative_to(tmp_path / "images")).mode == "L"
    assert SUPERSAMPLE == 2
