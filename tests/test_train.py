"""export/train: the distillation loop on the tiny architecture (CPU, seconds)."""
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import tifffile  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from dinosaw_deploy.cli import main  # noqa: E402
from dinosaw_deploy.engine.bias import BiasConfig, attention_bias  # noqa: E402
from dinosaw_deploy.engine.contract import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from dinosaw_deploy.errors import DinosawError  # noqa: E402
from dinosaw_deploy.export.build import run_export  # noqa: E402
from dinosaw_deploy.export.checkpoint import load_checkpoint  # noqa: E402
from dinosaw_deploy.export.model import ViT  # noqa: E402
from dinosaw_deploy.export.train import load_teacher, student_from_teacher, train  # noqa: E402
from dinosaw_deploy.export.train.data import ImageFolder, find_images, load_training_image  # noqa: E402
from dinosaw_deploy.export.train.recipe import load_recipe, recipe_from_dict  # noqa: E402
from dinosaw_deploy.export.train.targets import TargetCache, cosine_loss, distill_targets  # noqa: E402
from dinosaw_deploy.synthetic import synthetic_micrograph  # noqa: E402

from .conftest import TINY, locked_elsewhere  # noqa: E402

ZERO = [5, 47]
HEADS = 6
RECIPE = {
    "zero_channels": ZERO,
    "log_every": 5,
    "save_every": 1000,
    "stages": [
        {"name": "s1", "image_size": 56, "batch_size": 8, "epochs": 10, "lr": 1e-3},
        {"name": "s2", "image_size": 84, "batch_size": 8, "epochs": 1, "lr": 1e-4},
    ],
}


def _teacher_from(state: dict):
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / "t.pth")
        return load_teacher(Path(folder) / "t.pth", num_heads=HEADS)


def tiny_state() -> dict:
    return torch.load(TINY / "weights_timm.pth", weights_only=True)


def make_pos_embed(seed: int = 0) -> torch.Tensor:
    """timm layout (1, 37*37, 96): a shared offset plus a smooth position-dependent part."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.randn(1, 96, 4, 4, generator=g), size=(37, 37), mode="bicubic")
    return torch.randn(1, 1, 96, generator=g) + 0.3 * smooth.permute(0, 2, 3, 1).reshape(1, 37 * 37, 96)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A random tiny DINOv2 teacher, 24 training and 6 held-out synthetic micrographs, a short recipe."""
    root = tmp_path_factory.mktemp("train")
    torch.save({**tiny_state(), "pos_embed": make_pos_embed()}, root / "teacher.pth")
    for split, count, first_seed in (("train", 24, 0), ("val", 6, 100)):
        (root / split).mkdir()
        for i in range(count):
            tifffile.imwrite(root / split / f"{i:02d}.tif", synthetic_micrograph(128, 160, seed=first_seed + i)[0])
    (root / "recipe.json").write_text(json.dumps(RECIPE))
    return root


def held_out_cosine(student: ViT, teacher, folder, size: int = 84) -> float:
    data = ImageFolder(find_images(folder), size)
    pixels = torch.stack([data[i][1] for i in range(len(data))])
    grid = size // 14
    bias = torch.from_numpy(np.array(attention_bias(grid, grid, HEADS, BiasConfig())))
    with torch.no_grad():
        return 1.0 - float(cosine_loss(student(pixels, bias), distill_targets(teacher, pixels, ZERO)))


@pytest.fixture(scope="module")
def trained(work):
    teacher = load_teacher(work / "teacher.pth", num_heads=HEADS)
    before = held_out_cosine(student_from_teacher(teacher), teacher, work / "val")
    result = train(work / "teacher.pth", work / "train", work / "student.pth", recipe=work / "recipe.json",
                   num_heads=HEADS, device="cpu")
    return teacher, before, result


def test_short_run_brings_the_student_to_the_teacher(work, trained):
    teacher, before, result = trained
    assert result.finished and result.steps == 10 * 3 + 3
    student = load_checkpoint(result.output, overrides={"num_heads": HEADS}).model
    after = held_out_cosine(student, teacher, work / "val")
    assert before < 0.8, before  # the learned positional embedding really matters to the teacher
    assert after >= 0.9 and after > before + 0.1, (before, after)
    log = [json.loads(line) for line in (work / "student.pth.log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r and r["stage"] == "s1"]
    assert losses[-1] < losses[0]


def test_saved_student_exports_and_verifies(work, trained, tmp_path):
    raw = torch.load(trained[2].output, weights_only=True)
    assert set(raw) == set(tiny_state())  # the released timm layout: no pos_embed, no prefix
    result = run_export(trained[2].output, out_dir=tmp_path, name="student", overrides={"num_heads": HEADS})
    assert result.reports["student.onnx"]["passed"]


def test_one_step_lowers_the_loss(work):
    teacher = load_teacher(work / "teacher.pth", num_heads=HEADS)
    student = student_from_teacher(teacher)
    data = ImageFolder(find_images(work / "train")[:8], 56)
    pixels = torch.stack([data[i][1] for i in range(len(data))])
    bias = torch.from_numpy(np.array(attention_bias(4, 4, HEADS, BiasConfig())))
    target = distill_targets(teacher, pixels, ZERO)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    loss = cosine_loss(student(pixels, bias), target)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert float(cosine_loss(student(pixels, bias), target)) < float(loss) - 1e-3


def test_targets_zero_exactly_the_configured_channels(work):
    teacher = load_teacher(work / "teacher.pth", num_heads=HEADS)
    pixels = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        full = teacher(pixels, None)
    target = distill_targets(teacher, pixels, ZERO)
    assert torch.count_nonzero(target[:, ZERO]) == 0
    keep = [c for c in range(96) if c not in ZERO]
    assert torch.equal(target[:, keep], full[:, keep]) and torch.count_nonzero(full[:, ZERO]) > 0


def test_teacher_adds_positions_to_patches_only_and_student_drops_them():
    state = tiny_state()
    pixels = torch.randn(1, 3, 56, 84)
    bias = torch.from_numpy(np.array(attention_bias(4, 6, HEADS, BiasConfig())))
    reference = load_checkpoint(TINY / "weights_timm.pth", overrides={"num_heads": HEADS}).model
    offset = torch.randn(96)
    teacher = _teacher_from({**state, "pos_embed": offset.expand(1, 37 * 37, 96).clone()})
    shifted = ViT(reference.config)
    shifted.load_state_dict({**state, "patch_embed.proj.bias": state["patch_embed.proj.bias"] + offset})
    with torch.no_grad():  # a constant embedding, resized to any grid, is a patch-embedding bias
        torch.testing.assert_close(teacher.forward_tokens(pixels, None), shifted.forward_tokens(pixels, None))
        student = student_from_teacher(_teacher_from({**state, "pos_embed": make_pos_embed()}))
        torch.testing.assert_close(student(pixels, bias), reference(pixels, bias), rtol=0, atol=0)


def test_meta_dinov2_layout_matches_timm_layout():
    state, pos = tiny_state(), make_pos_embed(1)
    cls_row = torch.randn(1, 1, 96)
    timm_layout = _teacher_from({**state, "pos_embed": pos, "cls_token": state["cls_token"] + cls_row})
    meta = {("register_tokens" if k == "reg_token" else k): v for k, v in state.items()}
    dinov2_layout = _teacher_from({**meta, "pos_embed": torch.cat([cls_row, pos], dim=1),
                                   "mask_token": torch.zeros(1, 96)})
    pixels = torch.randn(1, 3, 70, 42)
    with torch.no_grad():
        torch.testing.assert_close(dinov2_layout.forward_tokens(pixels, None), timm_layout.forward_tokens(pixels, None))


@pytest.mark.parametrize(
    "pos_embed, message",
    [(None, "no learned positional embedding"), (torch.zeros(1, 1369, 96), "no learned positional embedding"),
     (torch.ones(1, 1000, 96), "not a square patch grid")],
)
def test_refuses_what_is_not_a_dinov2_teacher(tmp_path, pos_embed, message):
    state = tiny_state() if pos_embed is None else {**tiny_state(), "pos_embed": pos_embed}
    torch.save(state, tmp_path / "t.pth")
    with pytest.raises(DinosawError, match=message):
        load_teacher(tmp_path / "t.pth", num_heads=HEADS)


def test_resume_continues_exactly_where_it_stopped(work, tmp_path):
    recipe = {**RECIPE, "stages": [{**RECIPE["stages"][0], "epochs": 2}, RECIPE["stages"][1]]}
    common = dict(recipe=recipe_from_dict(recipe), num_heads=HEADS, device="cpu")
    whole = train(work / "teacher.pth", work / "train", tmp_path / "a.pth", **common)
    first = train(work / "teacher.pth", work / "train", tmp_path / "b.pth", max_steps=4, **common)
    assert not first.finished and first.steps == 4  # mid-epoch 2 of stage 1
    second = train(work / "teacher.pth", work / "train", tmp_path / "b.pth", max_steps=2, resume=True, **common)
    assert not second.finished and second.steps == 6  # exactly at the stage boundary
    last = train(work / "teacher.pth", work / "train", tmp_path / "b.pth", resume=True, **common)
    assert last.finished and last.steps == whole.steps == 9
    a, b = torch.load(tmp_path / "a.pth", weights_only=True), torch.load(tmp_path / "b.pth", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(DinosawError, match="recipe differs"):
        other = recipe_from_dict({**recipe, "seed": 1})
        train(work / "teacher.pth", work / "train", tmp_path / "b.pth", **{**common, "recipe": other}, resume=True)


def test_precomputed_targets_are_the_teachers_and_are_reused(work, tmp_path):
    teacher = load_teacher(work / "teacher.pth", num_heads=HEADS)
    data = ImageFolder(find_images(work / "val"), 56)
    cache = TargetCache(tmp_path, data, {"zero_channels": ZERO})
    assert not cache.is_fresh()
    cache.build(teacher, ZERO, batch_size=4, device=torch.device("cpu"), autocast=torch.no_grad)
    assert cache.is_fresh() and not TargetCache(tmp_path, data, {"zero_channels": [1]}).is_fresh()
    index = torch.tensor([5, 0, 3])
    expected = distill_targets(teacher, torch.stack([data[int(i)][1] for i in index]), ZERO)
    torch.testing.assert_close(cache[index], expected, rtol=2e-3, atol=2e-3)  # stored as float16

    messages = []
    recipe = recipe_from_dict({**RECIPE, "stages": [RECIPE["stages"][0] | {"epochs": 1}]})
    for _ in range(2):
        train(work / "teacher.pth", work / "val", tmp_path / "s.pth", recipe=recipe, num_heads=HEADS,
              device="cpu", targets_dir=tmp_path / "targets", overwrite=True, echo=messages.append)
    assert sum("precomputing" in m for m in messages) == 1


def test_image_folder_reads_any_format_and_centre_crops(tmp_path):
    import imagecodecs

    ramp = np.tile(np.arange(112, dtype=np.uint8) * 2, (56, 1))  # 56 x 112, brighter to the right
    imagecodecs.imwrite(tmp_path / "gray.png", ramp)
    imagecodecs.imwrite(tmp_path / "rgb.jpg", np.dstack([ramp] * 3))
    (tmp_path / "deeper").mkdir()
    tifffile.imwrite(tmp_path / "deeper" / "u16.tif", ramp[None].astype(np.uint16) * 257)
    (tmp_path / "notes.txt").write_text("not an image")
    paths = find_images(tmp_path)
    assert [p.name for p in paths] == ["u16.tif", "gray.png", "rgb.jpg"]
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    for path in paths:
        pixels = load_training_image(path, 56) * std + mean
        assert pixels.shape == (3, 56, 56)
        np.testing.assert_allclose(pixels[0], pixels[2], atol=1e-5)  # grayscale replicated (JPEG: gray RGB)
        np.testing.assert_allclose(pixels[1], ramp[:, 28:84] / 255.0, atol=0.02)  # the centre 56 columns
    (tmp_path / "empty").mkdir()
    with pytest.raises(DinosawError, match="no PNG/JPEG/TIFF"):
        find_images(tmp_path / "empty")


def test_recipes_are_validated(work, tmp_path):
    default = load_recipe()
    assert [s.image_size for s in default.stages] == [224, 518] and default.zero_channels == (47, 113, 117, 359)
    for bad, message in (({**RECIPE, "stage": []}, "unknown key"),
                         ({**RECIPE, "stages": [{**RECIPE["stages"][0], "batch_size": 0}]}, "batch_size"),
                         ({**RECIPE, "stages": []}, "non-empty")):
        with pytest.raises(DinosawError, match=message):
            recipe_from_dict(bad)
    with pytest.raises(DinosawError, match=r"zero_channels \[359\] do not exist"):
        train(work / "teacher.pth", work / "train", tmp_path / "x.pth", num_heads=HEADS, device="cpu",
              recipe=recipe_from_dict({**RECIPE, "zero_channels": [359]}))
    assert not (tmp_path / "x.pth").exists()


def test_a_checkpoint_being_trained_is_locked(work, tmp_path):
    """A second run writing the same checkpoint (or its state) stops before loading anything."""
    out = tmp_path / "s.pth"
    for held in (out, tmp_path / "s.pth.state"):
        with locked_elsewhere(held), pytest.raises(DinosawError, match="being written by another"):
            train(work / "teacher.pth", work / "val", out, num_heads=HEADS, device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_cli_trains_and_fails_cleanly(work, tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({**RECIPE, "stages": [RECIPE["stages"][0] | {"epochs": 1}]}))
    args = ["train", "--teacher", work / "teacher.pth", "--images", work / "val", "-o", tmp_path / "s.pth",
            "--recipe", tmp_path / "one.json", "--num-heads", HEADS, "--device", "cpu", "--workers", 0]
    runner = CliRunner()
    ok = runner.invoke(main, [str(a) for a in args])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "s.pth").is_file() and "after 1 steps, finished" in ok.output
    for extra, fragment in (([], "exists; pass --overwrite"),
                            (["--images", tmp_path / "missing", "--overwrite"], "image folder not found"),
                            (["--teacher", TINY / "weights_timm.pth", "--overwrite"], "positional embedding")):
        result = runner.invoke(main, [str(a) for a in args + extra])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert lines[0].startswith("Error: ") and fragment in lines[0], result.output
