"""Image files: presence by folder listing, header sizes, any mode as 8-bit RGB."""

import numpy as np
import pytest
from PIL import Image

from detr_ray.data import images
from detr_ray.data.images import ImageReadError, missing_files, open_rgb, read_sizes


def test_missing_files_lists_each_folder_once_and_keeps_order(tmp_path, monkeypatch):
    for name in ("a.png", "sub/b.png", "sub/deeper/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub" / "d.png").mkdir()  # a folder is not an image file
    listed = []
    real_scandir = images.os.scandir
    monkeypatch.setattr(images.os, "scandir", lambda p: listed.append(p) or real_scandir(p))
    names = ["sub/d.png", "a.png", "nope/e.png", "sub/b.png", "sub/deeper/c.png", "f.png"]
    assert missing_files(tmp_path, names) == ["sub/d.png", "nope/e.png", "f.png"]
    assert len(listed) == 4  # ".", "sub", "sub/deeper", "nope": one listing per folder


def test_header_sizes_in_processes_equal_those_read_here(tmp_path, monkeypatch):
    paths = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (10 + i, 20 + 2 * i)).save(path)
        paths.append(path)
    broken = tmp_path / "broken.png"
    broken.write_text("no image")
    paths.append(broken)
    here = read_sizes(paths)
    monkeypatch.setattr(images, "PARALLEL_FROM", 2)
    assert read_sizes(paths) == here
    assert here[:3] == [(10, 20), (11, 22), (12, 24)]
    assert isinstance(here[-1], str) and "UnidentifiedImageError" in here[-1]


def test_modes_with_no_8_bit_meaning_are_refused(tmp_path):
    floats = tmp_path / "f.tif"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(floats)
    with pytest.raises(ImageReadError, match="floating-point"):
        open_rgb(floats)
    palette = tmp_path / "p.png"
    Image.new("P", (3, 2)).save(palette)
    assert open_rgb(palette).mode == "RGB"
    with pytest.raises(FileNotFoundError):
        open_rgb(tmp_path / "missing.png")
