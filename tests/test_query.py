"""`bgbias query`'s parts with a known embedding (an image's mean colour): order kept across
image sizes, the test split's cache, the ranking worked out by hand, the contact sheet's
frames. tests/test_served.py runs the command on a registered model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgbias.data.datasets import DatasetIndex, Sample
from bgbias.core.errors import BgbiasError
from bgbias.reporting.query import GREY, contact_sheet, embed_images, nearest, run_query, split_embeddings


class MeanColour:
    """uint8 [B, H, W, 3] -> float32 [B, 3]; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return batch.mean(axis=(1, 2)).astype(np.float32)


def _index(root: Path, colours: list[tuple[int, int, int]], sizes: list[int]) -> tuple[DatasetIndex, Path]:
    samples = []
    for i, (colour, size) in enumerate(zip(colours, sizes)):
        path = root / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), colour).save(path)
        samples.append(Sample(f"{i}.png", 1 + i % 2, f"class{1 + i % 2}", "test", f"sha{i}"))
    index = DatasetIndex(root / "images", samples)
    index.write(root / "index.csv")
    return index, root / "index.csv"


def test_images_of_several_sizes_keep_their_order():
    images = [np.full((s, s, 3), v, dtype=np.uint8) for s, v in ((4, 10), (6, 20), (4, 30), (6, 40))]
    embed = MeanColour()
    np.testing.assert_array_equal(embed_images(embed, images)[:, 0], [10, 20, 30, 40])
    assert embed.calls == 2  # one batch per size


def test_the_test_split_is_embedded_once_per_model_and_index(tmp_path):
    index, csv = _index(tmp_path, [(10, 0, 0), (20, 0, 0), (30, 0, 0)], [8, 8, 12])
    embed = MeanColour()
    first, samples = split_embeddings(embed, "m-v1", index, csv, tmp_path / "cache")
    assert embed.calls == 2 and [s.path for s in samples] == ["0.png", "1.png", "2.png"]
    again, _ = split_embeddings(embed, "m-v1", index, csv, tmp_path / "cache")
    assert embed.calls == 2 and np.array_equal(first, again)  # from the cache
    split_embeddings(embed, "m-v2", index, csv, tmp_path / "cache")
    assert embed.calls == 4  # another model version: embedded again
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_nearest_by_hand():
    samples = [Sample(f"{i}.png", c, f"class{c}", "test", f"sha{i}") for i, c in enumerate((1, 2, 1))]
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    by_sha1 = {s.sha1: s for s in samples}
    # The query is sample 0 (same bytes): left out; |[1,0]-[0.6,0.8]| = sqrt(0.16+0.64), |[1,0]-[0,1]| = sqrt(2).
    result = nearest(Path("q.png"), embeddings[0], embeddings, samples, 5, "sha0", by_sha1)
    assert result.query_class == "class1"
    assert [h.sample.path for h in result.hits] == ["2.png", "1.png"]
    assert [round(h.distance, 6) for h in result.hits] == [round(np.sqrt(0.8), 6), round(np.sqrt(2), 6)]
    assert [h.same_class for h in result.hits] == [True, False]
    unknown = nearest(Path("q.png"), np.array([0.0, 1.0]), embeddings, samples, 1, "other", by_sha1)
    assert unknown.query_class is None and [(h.sample.path, h.same_class) for h in unknown.hits] == [("1.png", None)]


def test_an_unknown_query_gets_grey_frames(tmp_path):
    index, csv = _index(tmp_path, [(200, 0, 0), (0, 200, 0)], [8, 8])
    query = tmp_path / "query.png"
    Image.new("RGB", (10, 10), (190, 10, 0)).save(query)
    (result,) = run_query(MeanColour(), "m-v1", [query], index, csv, tmp_path / "cache", k=2)
    assert result.query_class is None and result.hits[0].sample.path == "0.png"
    with Image.open(contact_sheet([result], index.root, tmp_path / "sheet.png")) as sheet:
        assert sheet.getpixel((112 + 1, 1)) == GREY and sheet.getpixel((2 * 112 + 1, 1)) == GREY
    with pytest.raises(BgbiasError, match="--k must be at least 1"):
        run_query(MeanColour(), "m-v1", [query], index, csv, tmp_path / "cache", k=0)
    with pytest.raises(BgbiasError, match="query image not found: .*nothing.png"):
        run_query(MeanColour(), "m-v1", [tmp_path / "nothing.png"], index, csv, tmp_path / "cache", k=2)


@pytest.mark.parametrize("out", ["sheet.txt", "sheet", "folder"])
def test_a_contact_sheet_name_without_an_image_suffix_is_refused_before_the_model_loads(tmp_path, monkeypatch,
                                                                                       capsys, out):
    """--out used to end in a KeyError traceback from save_image, after the model had
    embedded the whole test split."""
    from bgbias import cli
    from tests.conftest import write_params

    write_params(tmp_path)
    (tmp_path / "folder").mkdir()
    query = tmp_path / "query.png"
    Image.new("RGB", (10, 10), (190, 10, 0)).save(query)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert cli.main(["query", str(query), "--model", "models:/bgbias-synthetic-triplet@base", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {out}: expected an image file name") and len(err.splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before  # no index read, no tracking store made
    with pytest.raises(BgbiasError, match="expected an image file name"):
        contact_sheet([], tmp_path, tmp_path / out)
