"""Tests of the injected-causes study's own instruments: the split, the transforms, the acceptance rule."""
from pathlib import Path

from PIL import Image

import study


def test_split_is_disjoint_and_seeded():
    files = [f"{i:03d}.jpg" for i in range(398)]
    a, b = study.split(files, 0)
    assert len(a) == len(b) == 199 and not set(a) & set(b)
    assert study.split(files, 0) == (a, b) and study.split(files, 1) != (a, b)


def test_transforms_do_what_they_say(tmp_path: Path):
    src = tmp_path / "x.png"  # lossless, so colours can be compared exactly
    Image.new("RGB", (400, 300), (200, 30, 60)).save(src)
    for kind, size, mode in [("grey", (400, 300), "L"), ("down4", (100, 75), "RGB"), ("both", (100, 75), "L")]:
        dst = tmp_path / f"{kind}.jpg"
        study.transform(src, dst, kind)
        im = Image.open(dst.with_suffix(".png"))
        assert im.size == size and im.mode == mode, kind
    # downsampling keeps the colour (antialiased, not a channel mix-up)
    assert Image.open(tmp_path / "down4.png").getpixel((50, 30)) == (200, 30, 60)


def test_the_right_and_wrong_controls_are_the_issues():
    assert study.RIGHT["grey"] == "gap_closed_grey" and "gap_closed_grey" in study.WRONG["down4"]
    assert set(study.RIGHT) == {"grey", "down4", "both"}
