"""Lazy region reader (every TIFF flavour, PNG/JPEG, vendor metadata) and global intensity fitting."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image import intensity
from dinosaw_deploy.image.intensity import fit_intensity_range, scale_intensity
from dinosaw_deploy.image.reader import open_image

RNG = np.random.default_rng(7)
GRAY = RNG.integers(0, 256, (300, 410), dtype=np.uint8)
RGB = RNG.integers(0, 256, (300, 410, 3), dtype=np.uint8)
REGION = (37, 51, 120, 203)  # y0, x0, h, w: crosses tile and strip borders


def _write(path, data, **kwargs):
    tifffile.imwrite(path, data, **kwargs)
    return path


FLAVOURS = {
    "tiled_deflate": (GRAY, {"tile": (64, 64), "compression": "zlib"}),
    "striped_lzw_rgb": (RGB, {"rowsperstrip": 16, "compression": "lzw"}),
    "bigtiff_zstd_tiled_rgb": (RGB, {"bigtiff": True, "tile": (64, 64), "compression": "zstd"}),
    "packbits_u16": (GRAY.astype(np.uint16) * 257, {"compression": "packbits"}),
    "float32_deflate": (GRAY.astype(np.float32) / 7.0, {"compression": "deflate", "predictor": True}),
    "uncompressed_single_strip": (GRAY, {"rowsperstrip": 300}),
    "uncompressed_tiled_u16": (GRAY.astype(np.uint16), {"tile": (32, 32)}),
    "planar_separate_rgb": (np.moveaxis(RGB, -1, 0).copy(), {"planarconfig": "separate", "photometric": "rgb"}),
    "float64_bigtiff": (GRAY.astype(np.float64), {"bigtiff": True}),
}


@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_region_matches_full_decode(tmp_path, name):
    data, kwargs = FLAVOURS[name]
    path = _write(tmp_path / f"{name}.tif", data, **kwargs)
    expected = tifffile.imread(path)
    if expected.ndim == 3 and expected.shape[0] == 3:
        expected = np.moveaxis(expected, 0, -1)
    y, x, h, w = REGION
    with open_image(path) as img:
        assert img.shape == expected.shape[:2]
        region = img.read_region(y, x, h, w)
    np.testing.assert_array_equal(region, expected[y : y + h, x : x + w])
    assert region.dtype == expected.dtype


def test_jpeg_compressed_tiff_matches_tifffile(tmp_path):
    path = _write(tmp_path / "jpeg.tif", RGB, tile=(64, 64), compression="jpeg", photometric="rgb")
    with open_image(path) as img:
        region = img.read_region(*REGION)
    y, x, h, w = REGION
    np.testing.assert_array_equal(region, tifffile.imread(path)[y : y + h, x : x + w])


def test_palette_becomes_rgb(tmp_path):
    cmap = RNG.integers(0, 65536, (3, 256), dtype=np.uint16)
    path = _write(tmp_path / "pal.tif", GRAY, photometric="palette", colormap=cmap)
    with open_image(path) as img:
        assert img.info.channels == 3
        region = img.read_region(*REGION)
    y, x, h, w = REGION
    np.testing.assert_array_equal(region, cmap[:, GRAY[y : y + h, x : x + w]].transpose(1, 2, 0))


def test_multipage_and_pyramid_levels(tmp_path):
    path = _write(tmp_path / "pages.tif", np.stack([GRAY, 255 - GRAY]))
    with open_image(path, page=1) as img:
        np.testing.assert_array_equal(img.read_region(*REGION), (255 - GRAY)[37:157, 51:254])
    pyr = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(pyr, bigtiff=True) as tif:
        tif.write(GRAY, subifds=2, tile=(64, 64), compression="zlib", metadata={"axes": "YX"})
        tif.write(GRAY[::2, ::2], subfiletype=1, tile=(64, 64), compression="zlib")
        tif.write(GRAY[::4, ::4], subfiletype=1, tile=(64, 64), compression="zlib")
    with open_image(pyr) as img:
        assert img.shape == GRAY.shape and len(img.info.levels) == 3
    with open_image(pyr, level=2) as img:
        assert img.shape == GRAY[::4, ::4].shape
        np.testing.assert_array_equal(img.read_region(5, 6, 30, 40), GRAY[::4, ::4][5:35, 6:46])


def test_single_strip_uncompressed_is_not_read_whole(tmp_path):
    big = np.zeros((4000, 4000), np.uint8)
    big[1234, 2345] = 99
    path = _write(tmp_path / "strip.tif", big, rowsperstrip=4000)
    with open_image(path) as img:
        tracemalloc.start()
        region = img.read_region(1230, 2340, 10, 10)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert region[4, 5] == 99
    assert peak < 1_000_000  # the image is 16 MB


@pytest.mark.parametrize("codec, suffix", [("png", ".png"), ("jpeg8", ".jpg")])
def test_png_jpeg(tmp_path, codec, suffix):
    imagecodecs = pytest.importorskip("imagecodecs")
    path = tmp_path / f"small{suffix}"
    path.write_bytes(getattr(imagecodecs, f"{codec}_encode")(RGB))
    expected = imagecodecs.imread(str(path))
    with open_image(path) as img:
        np.testing.assert_array_equal(img.read_region(*REGION), expected[37:157, 51:254])
        assert img.info.pixel_size is None


FEI_TEXT = "[User]\nDate=01/02/2024\n[Scan]\nPixelWidth=2.5e-09\nPixelHeight=2.6e-09\n[Image]\nResolutionY=280\n"
ZEISS_TEXT = "\r\n".join(["0", "AP_IMAGE_PIXEL_SIZE", "Image Pixel Size = 3.5 nm",
                          "DP_IMAGE_STORE", "Store resolution = 410 * 270", ""])


@pytest.mark.parametrize("tag, text, vendor, size, rows", [
    (34682, FEI_TEXT, "fei", (2.6e-9, 2.5e-9), 280),
    (34118, ZEISS_TEXT, "zeiss", (3.5e-9, 3.5e-9), 270),
])
def test_vendor_metadata_and_databar(tmp_path, tag, text, vendor, size, rows):
    path = _write(tmp_path / f"{vendor}.tif", GRAY, extratags=[(tag, "s", 0, text, True)])
    with open_image(path) as img:
        assert img.info.vendor == vendor and img.shape == GRAY.shape and img.info.databar_rows == 0
        np.testing.assert_allclose(img.info.pixel_size, size)
    with open_image(path, crop_databar=True) as img:
        assert img.shape == (rows, GRAY.shape[1]) and img.info.databar_rows == GRAY.shape[0] - rows
        with pytest.raises(DinosawError, match="outside"):
            img.read_region(rows - 5, 0, 10, 10)


def test_bad_files_raise_one_clear_error(tmp_path):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00" + b"not a tiff" * 20)
    full = _write(tmp_path / "full.tif", GRAY, tile=(64, 64), compression="zlib")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    two = _write(tmp_path / "two.tif", np.zeros((40, 40, 2), np.uint8), photometric="minisblack",
                 planarconfig="contig")
    cases = [
        (garbage, {}, "not a valid TIFF"),
        (truncated, {}, "truncated or corrupt"),
        (two, {}, "2 samples per pixel"),
        (full, {"page": 2}, "page 2 does not exist"),
        (full, {"level": 1}, "level 1 does not exist"),
        (full, {"crop_databar": True}, "needs FEI or Zeiss metadata"),
        (tmp_path / "missing.tif", {}, "not found"),
    ]
    for path, kwargs, message in cases:
        with pytest.raises(DinosawError, match=message):
            open_image(path, **kwargs)


def test_intensity_rules(tmp_path):
    u16 = _write(tmp_path / "u16.tif", (GRAY.astype(np.uint16) * 10))
    with open_image(u16) as img:
        assert fit_intensity_range(img) == (0.0, 65535.0)
        lo, hi = fit_intensity_range(img, percentiles=(1, 99))
        assert (lo, hi) == tuple(np.percentile(GRAY.astype(np.float64) * 10, (1, 99)))
        assert fit_intensity_range(img, intensity_range=(5, 9)) == (5.0, 9.0)
        with pytest.raises(DinosawError):
            fit_intensity_range(img, intensity_range=(9, 5))
    floats = GRAY.astype(np.float32) * 3.0 - 100.0
    path = _write(tmp_path / "f.tif", floats)
    with open_image(path) as img:
        lo_hi = fit_intensity_range(img)
        # small image: the global range is exactly the whole-image rule of preprocess
        np.testing.assert_array_equal(scale_intensity(floats, lo_hi), scale_intensity(floats))


def test_intensity_sample_of_a_large_image_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(intensity, "WHOLE_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(intensity, "WINDOW", 32)
    ramp = np.linspace(-5, 5, 300 * 410, dtype=np.float32).reshape(300, 410)
    path = _write(tmp_path / "ramp.tif", ramp)
    with open_image(path) as img:
        first = fit_intensity_range(img)
        assert first == fit_intensity_range(img)
        assert -5 <= first[0] < first[1] <= 5 and first != (-5.0, 5.0)  # windows, not the whole image


def test_ome_physical_size_is_read(tmp_path):
    """Pixel size from OME-XML (our own segmentation output), so `apply` on it keeps the scale."""
    from dinosaw_deploy.image.ome_writer import write_ome_pyramid

    path = tmp_path / "seg.ome.tif"
    write_ome_pyramid(path, np.ones((600, 700), np.uint8), pixel_size=(2e-9, 3e-9))
    with open_image(path) as img:
        assert img.info.pixel_size == pytest.approx((2e-9, 3e-9))
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.ones((20, 20), np.uint8))
    with open_image(plain) as img:
        assert img.info.pixel_size is None


def test_page_of_a_later_series_reports_that_series_levels(tmp_path):
    """At level 0 --page counts every IFD: the levels must be those of the page's own series."""
    path = tmp_path / "two_series.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((64, 80), np.uint8))
        tw.write(np.ones((32, 48), np.uint8))
    with open_image(path, page=1) as reader:
        assert reader.shape == (32, 48)
        assert reader.info.levels == ((32, 48),)
        assert (reader.read_region(0, 0, 32, 48) == 1).all()


@pytest.mark.parametrize("host_limit", [None, 100, 89_478_485])
def test_pillow_bomb_guard_is_left_as_the_host_set_it(tmp_path, monkeypatch, host_limit):
    """Reading a header never changes Pillow's process-wide limit; with a limit the file exceeds
    (here 30x30 px > 2 x 100), the declared size still comes from the header."""
    from PIL import Image

    from dinosaw_deploy.image.reader import image_shape

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", host_limit)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(small)
    assert image_shape(small) == (30, 40)
    assert Image.MAX_IMAGE_PIXELS == host_limit
