import pytest
from PIL import Image

from bgbias.core.files import TEMP_SUFFIX, atomic_write, remove_stale_temps, save_image, write_json


def test_failed_write_keeps_old_content_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert list(tmp_path.iterdir()) == [target]


def test_save_image_uses_target_suffix(tmp_path):
    save_image(tmp_path / "m.png", Image.new("L", (3, 2), 7))
    with Image.open(tmp_path / "m.png") as im:
        assert im.format == "PNG" and im.size == (3, 2) and im.getpixel((0, 0)) == 7


def test_remove_stale_temps(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / f".x.png.123{TEMP_SUFFIX}").write_bytes(b"half")
    (tmp_path / "a" / "x.png").write_bytes(b"done")
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.png"]
