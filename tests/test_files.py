"""files: resolved paths, output checks."""
from __future__ import annotations

import pytest

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import check_output, fingerprint, resolved
from tests.test_hostile import assert_one_line_error, cli


def _loop(tmp_path):
    (tmp_path / "a.tif").symlink_to(tmp_path / "b.tif")
    (tmp_path / "b.tif").symlink_to(tmp_path / "a.tif")
    return tmp_path / "a.tif"


def test_a_symlink_loop_is_one_clear_error(tmp_path):
    loop = _loop(tmp_path)
    for call in (lambda: resolved(loop), lambda: fingerprint(loop),
                 lambda: check_output(tmp_path / "out.zarr", [loop], overwrite=False),
                 lambda: check_output(loop, [], overwrite=True)):
        with pytest.raises(DinosawError, match="symbolic link loop|Too many levels of symbolic links"):
            call()


def test_a_symlink_loop_as_input_on_the_command_line(tiny_engine, tmp_path):
    loop = _loop(tmp_path)
    for args in (["features", loop, "-o", tmp_path / "f.zarr", "--engine", tiny_engine],
                 ["segment", loop, "--labels", loop, "-o", tmp_path / "o.ome.tif", "--no-vit"]):
        result = cli(*args)
        assert_one_line_error(result)
        assert "a.tif" in result.stderr and "symbolic link" in result.stderr
