import numpy as np
from PIL import Image

from bgbias.core.images import load_rgb


def test_modes_become_rgb(tmp_path):
    Image.new("L", (4, 3), 77).save(tmp_path / "gray.png")
    assert load_rgb(tmp_path / "gray.png").getpixel((0, 0)) == (77, 77, 77)

    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (10, 20, 30, 0))  # fully transparent -> white
    rgba.save(tmp_path / "a.png")
    assert list(load_rgb(tmp_path / "a.png").get_flattened_data()) == [(10, 20, 30), (255, 255, 255)]

    Image.new("CMYK", (5, 5), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    r, g, b = load_rgb(tmp_path / "c.jpg").getpixel((2, 2))
    assert r > 200 and g < 40 and b < 40  # CMYK (0, 1, 1, 0) is red

    Image.new("P", (2, 2), 0).save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png").mode == "RGB"

    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(tmp_path / "i16.png")
    assert [p[0] for p in load_rgb(tmp_path / "i16.png").get_flattened_data()] == [0, 255]

    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "tiny.png")
    assert load_rgb(tmp_path / "tiny.png").size == (1, 1)


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (6, 2), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "o.jpg", exif=exif)
    assert load_rgb(tmp_path / "o.jpg").size == (2, 6)
