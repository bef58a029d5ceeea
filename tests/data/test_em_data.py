"""EM data path: the PNG-pair reader, TIFF stacks, EM preparation, the synthetic stack, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io as skio

from unet.data.pairs import PngPairDataset
from unet.errors import ConfigError, DataError, MissingDataError, UserError
from unet.prep.em import (
    default_val_slices,
    parse_index_list,
    prepare_em,
    prepare_em_from_pairs,
    read_tiff_stack,
    synthetic_em_stack,
    write_tiff_stack,
)
from unet.prep.em import slices as em_slices

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "preprocessing" / "em_prepare.py"


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    skio.imsave(path, array, check_contrast=False)


def _pair(root: Path, split: str, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    _save(root / split / "images" / f"{name}.png", image)
    _save(root / split / "masks" / f"{name}.png", mask)


def _image(h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def _mask(h: int = 16, w: int = 16, high: int = 255) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = high
    return mask


@pytest.fixture(scope="module")
def small_stack() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_em_stack(n_slices=8, size=128, seed=3)


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- reader


def test_reader_shapes_values_and_names(tmp_path: Path) -> None:
    images = {n: _image(seed=i) for i, n in enumerate(["b", "a", "c"])}
    for name, img in images.items():
        _pair(tmp_path, "train", name, img, _mask())
    ds = PngPairDataset(tmp_path, "train", None, "none")
    assert len(ds) == 3
    assert [ds.sample_name(i) for i in range(3)] == ["a", "b", "c"]
    image, mask = ds[1]
    assert image.dtype == torch.float32 and mask.dtype == torch.float32
    assert image.shape == (1, 16, 16) and mask.shape == (1, 16, 16)
    np.testing.assert_allclose(image[0].numpy(), images["b"] / 255.0, atol=1e-6)
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}
    assert torch.equal(mask[0], torch.from_numpy(_mask() / 255.0).float())


def test_reader_masks_zero_one_and_single_value(tmp_path: Path) -> None:
    _pair(tmp_path, "val", "01", _image(), _mask(high=1))
    _pair(tmp_path, "val", "all", _image(), np.full((16, 16), 255, np.uint8))
    _pair(tmp_path, "val", "none", _image(), np.zeros((16, 16), np.uint8))
    ds = PngPairDataset(tmp_path, "val", None, "none")
    masks = {ds.sample_name(i): ds[i][1] for i in range(len(ds))}
    assert torch.equal(masks["01"][0], torch.from_numpy(_mask(high=1)).float())
    assert bool((masks["all"] == 1).all()) and bool((masks["none"] == 0).all())


def test_reader_crop_and_pad(tmp_path: Path) -> None:
    img = np.arange(20 * 12, dtype=np.uint8).reshape(20, 12)
    mask = np.full((20, 12), 255, np.uint8)
    _pair(tmp_path, "train", "x", img, mask)
    image, m = PngPairDataset(tmp_path, "train", (8, 16), "none")[0]
    assert image.shape == (1, 8, 16) and m.shape == (1, 8, 16)
    np.testing.assert_allclose(image[0, :, 2:14].numpy(), img[6:14, :] / 255.0, atol=1e-6)
    assert bool((image[0, :, :2] == 0).all()) and bool((m[0, :, :2] == 0).all())
    assert bool((m[0, :, 2:14] == 1).all()) and bool((m[0, :, 14:] == 0).all())


def test_reader_instance_normalization(tmp_path: Path) -> None:
    _pair(tmp_path, "train", "x", _image(32, 32), _mask(32, 32))
    _pair(tmp_path, "train", "y", np.full((32, 32), 7, np.uint8), _mask(32, 32))
    ds = PngPairDataset(tmp_path, "train", None, "instance")
    image = ds[0][0]
    assert abs(float(image.mean())) < 1e-5 and abs(float(image.std(unbiased=False)) - 1) < 1e-4
    assert bool((ds[1][0] == 0).all())
    with pytest.raises(ValueError):
        PngPairDataset(tmp_path, "train", None, "zscore")


def test_reader_accepts_grey_rgb_and_rejects_colour(tmp_path: Path) -> None:
    img = _image()
    _pair(tmp_path, "train", "grey", np.stack([img] * 3, axis=-1), _mask())
    ds = PngPairDataset(tmp_path, "train", None, "none")
    np.testing.assert_allclose(ds[0][0][0].numpy(), img / 255.0, atol=1e-6)
    colour = np.stack([img, img, 255 - img], axis=-1)
    _pair(tmp_path, "train", "rgb", colour, _mask())
    with pytest.raises(DataError) as exc:
        PngPairDataset(tmp_path, "train", None, "none")
    assert "rgb.png" in _one_line(exc) and "colour" in str(exc.value)


def test_missing_data_errors(tmp_path: Path) -> None:
    cases = []
    cases.append(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append(empty)
    no_split = tmp_path / "nosplit"
    _pair(no_split, "val", "a", _image(), _mask())
    cases.append(no_split)
    no_masks = tmp_path / "nomasks"
    _save(no_masks / "train" / "images" / "a.png", _image())
    cases.append(no_masks)
    no_images = tmp_path / "noimages"
    _save(no_images / "train" / "masks" / "a.png", _mask())
    cases.append(no_images)
    empty_split = tmp_path / "emptysplit"
    (empty_split / "train" / "images").mkdir(parents=True)
    (empty_split / "train" / "masks").mkdir(parents=True)
    cases.append(empty_split)
    for root in cases:
        with pytest.raises(MissingDataError) as exc:
            PngPairDataset(root, "train", None, "none")
        assert str(root) in _one_line(exc)
    assert issubclass(MissingDataError, DataError) and MissingDataError.__doc__


def test_unpaired_files(tmp_path: Path) -> None:
    _pair(tmp_path, "train", "a", _image(), _mask())
    _save(tmp_path / "train" / "images" / "lonely.png", _image())
    with pytest.raises(DataError) as exc:
        PngPairDataset(tmp_path, "train", None, "none")
    assert "lonely.png" in _one_line(exc) and "no mask" in str(exc.value)
    (tmp_path / "train" / "images" / "lonely.png").unlink()
    _save(tmp_path / "train" / "masks" / "orphan.png", _mask())
    with pytest.raises(DataError) as exc:
        PngPairDataset(tmp_path, "train", None, "none")
    assert "orphan.png" in _one_line(exc) and "no image" in str(exc.value)


def test_size_mismatch_between_image_and_mask(tmp_path: Path) -> None:
    _pair(tmp_path, "train", "a", _image(16, 16), _mask(16, 20))
    with pytest.raises(DataError) as exc:
        PngPairDataset(tmp_path, "train", (8, 8), "none")
    text = _one_line(exc)
    assert "a.png" in text and "(16, 16)" in text and "(16, 20)" in text


def test_non_binary_mask(tmp_path: Path) -> None:
    mask = _mask()
    mask[0, :3] = 128
    _pair(tmp_path, "train", "a", _image(), mask)
    with pytest.raises(DataError) as exc:
        PngPairDataset(tmp_path, "train", None, "none")
    text = _one_line(exc)
    assert "{0, 128, 255}" in text and "a.png" in text and "0 and 255" in text


def test_corrupt_png(tmp_path: Path) -> None:
    _pair(tmp_path, "train", "a", _image(64, 64), _mask(64, 64))
    path = tmp_path / "train" / "images" / "a.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as exc:
        PngPairDataset(tmp_path, "train", None, "none")
    assert str(path) in _one_line(exc)


def test_mixed_sizes_need_a_crop(tmp_path: Path) -> None:
    _pair(tmp_path, "train", "a", _image(16, 16), _mask(16, 16))
    _pair(tmp_path, "train", "b", _image(20, 24), _mask(20, 24))
    with pytest.raises(DataError) as exc:
        PngPairDataset(tmp_path, "train", None, "none")
    assert "b.png" in _one_line(exc) and "(20, 24)" in str(exc.value)
    ds = PngPairDataset(tmp_path, "train", (16, 16), "none")
    assert all(ds[i][0].shape == (1, 16, 16) for i in range(len(ds)))


# --------------------------------------------------------------------------- TIFF


def test_tiff_roundtrip_and_errors(tmp_path: Path) -> None:
    stack = np.random.default_rng(0).integers(0, 256, size=(4, 10, 12), dtype=np.uint8)
    write_tiff_stack(tmp_path / "s.tif", stack)
    back = read_tiff_stack(tmp_path / "s.tif")
    assert back.dtype == np.uint8 and back.shape == (4, 10, 12)
    np.testing.assert_array_equal(back, stack)

    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage" * 3)
    with pytest.raises(DataError) as exc:
        read_tiff_stack(tmp_path / "bad.tif")
    assert "bad.tif" in _one_line(exc)
    with pytest.raises(DataError):
        read_tiff_stack(tmp_path / "missing.tif")
    import tifffile

    tifffile.imwrite(tmp_path / "flat.tif", stack[0])
    with pytest.raises(DataError) as exc:
        read_tiff_stack(tmp_path / "flat.tif")
    assert "(10, 12)" in _one_line(exc)
    with pytest.raises(ValueError):
        write_tiff_stack(tmp_path / "f.tif", stack.astype(np.float32))


# --------------------------------------------------------------------------- preparation


def test_split_helpers() -> None:
    assert default_val_slices(30) == [24, 25, 26, 27, 28, 29]
    assert default_val_slices(8) == [6, 7]
    assert parse_index_list("24-29") == list(range(24, 30))
    assert parse_index_list("0,5,10") == [0, 5, 10]
    assert parse_index_list("10, 0-2") == [0, 1, 2, 10]
    for bad in ("a-b", "5-2", "", "1,,2"):
        with pytest.raises(ConfigError):
            parse_index_list(bad)


def test_prepare_em_split_sizes_and_manifest(tmp_path: Path, small_stack) -> None:
    volume, labels = small_stack
    out = tmp_path / "em"
    info = prepare_em(volume, labels, out, None, resize=64, crop=48, augment_copies=2, seed=5)
    train_names = sorted(p.stem for p in (out / "train" / "images").glob("*.png"))
    val_names = sorted(p.stem for p in (out / "val" / "images").glob("*.png"))
    assert val_names == ["slice_06", "slice_07"]
    base_train = {n.split("_aug")[0] for n in train_names}
    assert base_train == {f"slice_{i:02d}" for i in range(6)}
    assert not base_train & set(val_names)
    assert len(train_names) == 6 * 3 and "slice_00_aug2" in train_names
    for split in ("train", "val"):
        for p in (out / split / "masks").glob("*.png"):
            m = skio.imread(p)
            assert m.shape == (48, 48) and set(np.unique(m).tolist()) <= {0, 255}
            assert skio.imread(out / split / "images" / p.name).shape == (48, 48)
    manifest = json.loads((out / "prepare.json").read_text())
    written = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file() and f.name != "prepare.json")
    assert manifest.pop("files") == written  # what a later --overwrite removes, exactly
    assert manifest == json.loads(json.dumps(info))
    assert manifest["val_slices"] == [6, 7] and manifest["train_slices"] == list(range(6))
    assert manifest["resize"] == 64 and manifest["crop"] == 48 and manifest["seed"] == 5
    assert manifest["pairs"] == {"train": 18, "val": 2}
    assert 0.6 < manifest["foreground_fraction"]["train"] < 0.9
    for stem in ("slice_00_aug1", "slice_01_aug2"):
        img = skio.imread(out / "train" / "images" / f"{stem}.png").astype(float)
        msk = skio.imread(out / "train" / "masks" / f"{stem}.png")
        assert img[msk == 255].mean() > img[msk == 0].mean() + 30

    again = tmp_path / "again"
    prepare_em(volume, labels, again, None, resize=64, crop=48, augment_copies=2, seed=5)
    for p in (out / "train" / "images").glob("*.png"):
        np.testing.assert_array_equal(skio.imread(p), skio.imread(again / "train/images" / p.name))


def test_prepare_em_positive_class_is_label_255(tmp_path: Path) -> None:
    labels = np.zeros((3, 12, 12), np.uint8)
    labels[:, 2:9, 3:7] = 255
    volume = np.full((3, 12, 12), 100, np.uint8)
    prepare_em(volume, labels, tmp_path / "a", [2], resize=None, crop=None)
    np.testing.assert_array_equal(skio.imread(tmp_path / "a/train/masks/slice_00.png"), labels[0])
    ds = PngPairDataset(tmp_path / "a", "val", None, "none")
    assert torch.equal(ds[0][1][0], torch.from_numpy(labels[2] == 255).float())
    prepare_em(volume, labels // 255, tmp_path / "b", [2], resize=None, crop=None)
    np.testing.assert_array_equal(skio.imread(tmp_path / "b/val/masks/slice_02.png"), labels[2])


def test_prepare_em_errors(tmp_path: Path, small_stack) -> None:
    volume, labels = small_stack
    out = tmp_path / "em"
    with pytest.raises(ConfigError):
        prepare_em(volume, labels, out, [8], resize=64, crop=48)
    with pytest.raises(ConfigError):
        prepare_em(volume, labels, out, range(8), resize=64, crop=48)
    with pytest.raises(ConfigError):
        prepare_em(volume, labels, out, None, resize=64, crop=80)
    with pytest.raises(DataError) as exc:
        prepare_em(volume, labels[:4], out, None, resize=64, crop=48)
    assert "(4, 128, 128)" in _one_line(exc)
    grey = labels.copy()
    grey[0, 0, 0] = 7
    with pytest.raises(DataError) as exc:
        prepare_em(volume, grey, out, None, resize=64, crop=48)
    assert "{0, 7, 255}" in _one_line(exc)
    assert not out.exists()


def test_interrupted_preparation_leaves_nothing(tmp_path: Path, small_stack, monkeypatch) -> None:
    volume, labels = small_stack
    calls = {"n": 0}
    real = em_slices.write_pair

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(em_slices, "write_pair", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_em(volume, labels, tmp_path / "em", None, resize=64, crop=48)
    assert list(tmp_path.iterdir()) == []


def test_prepare_from_pairs(tmp_path: Path) -> None:
    src_i, src_m = tmp_path / "imgs", tmp_path / "msks"
    for i in range(5):
        _save(src_i / f"s{i}.png", _image(40, 40, seed=i))
        _save(src_m / f"s{i}.png", _mask(40, 40))
    info = prepare_em_from_pairs(src_i, src_m, tmp_path / "out", val_fraction=0.4, crop=32)
    assert info["val_names"] == ["s3", "s4"] and info["train_names"] == ["s0", "s1", "s2"]
    ds = PngPairDataset(tmp_path / "out", "train", None, "none")
    assert len(ds) == 3 and ds[0][0].shape == (1, 32, 32)
    info = prepare_em_from_pairs(src_i, src_m, tmp_path / "out2", val_names=["s0"], crop=None)
    assert info["val_names"] == ["s0"]
    assert PngPairDataset(tmp_path / "out2", "val", None, "none")[0][0].shape == (1, 40, 40)
    with pytest.raises(ConfigError):
        prepare_em_from_pairs(src_i, src_m, tmp_path / "o3", val_names=["nope"])
    with pytest.raises(DataError):
        prepare_em_from_pairs(src_i, src_m, tmp_path / "o4", crop=64)
    _save(src_i / "extra.png", _image(40, 40))
    with pytest.raises(DataError) as exc:
        prepare_em_from_pairs(src_i, src_m, tmp_path / "o5")
    assert "extra.png" in _one_line(exc)
    with pytest.raises(DataError):
        prepare_em_from_pairs(tmp_path / "none", src_m, tmp_path / "o6")


# --------------------------------------------------------------------------- synthetic


def test_synthetic_stack_properties() -> None:
    volume, labels = synthetic_em_stack(n_slices=6, size=192, seed=1)
    assert volume.shape == labels.shape == (6, 192, 192)
    assert volume.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 255}
    fg = labels == 255
    assert 0.7 < fg.mean() < 0.86
    assert volume[fg].mean() > volume[~fg].mean() + 40
    neighbour = np.mean([(labels[z] == labels[z + 1]).mean() for z in range(5)])
    assert neighbour > 0.8 and neighbour > (labels[0] == labels[5]).mean()
    v2, l2 = synthetic_em_stack(n_slices=6, size=192, seed=1)
    np.testing.assert_array_equal(volume, v2)
    np.testing.assert_array_equal(labels, l2)
    v3, _ = synthetic_em_stack(n_slices=6, size=192, seed=2)
    assert not np.array_equal(volume, v3)


# --------------------------------------------------------------------------- command line


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CLI), *args], capture_output=True, text=True, timeout=120
    )


def test_cli_synthetic_then_reader(tmp_path: Path) -> None:
    out = tmp_path / "em"
    result = _cli(
        "--synthetic", "--out", str(out), "--synthetic-slices", "6", "--synthetic-size", "96",
        "--resize", "64", "--crop", "48", "--val-slices", "4-5", "--augment-copies", "1",
    )
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "foreground" in result.stdout
    assert (tmp_path / "em-synthetic-source" / "train-volume.tif").is_file()
    assert read_tiff_stack(tmp_path / "em-synthetic-source" / "train-labels.tif").shape == (6, 96, 96)
    train = PngPairDataset(out, "train", (48, 48), "none")
    val = PngPairDataset(out, "val", (48, 48), "none")
    assert len(train) == 8 and len(val) == 2
    assert val.names == ["slice_04", "slice_05"]


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _cli("--volume", "missing-volume.tif", "--labels", "missing-labels.tif")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing-volume.tif" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def cli_module():
    sys.path.insert(0, str(CLI.parent))
    try:
        import em_prepare
    finally:
        sys.path.remove(str(CLI.parent))
    return em_prepare


@pytest.mark.parametrize(
    "args",
    [
        ["--synthetic", "--volume", "x.tif"],
        [],
        ["--synthetic", "--synthetic-slices", "4", "--synthetic-size", "32", "--val-slices", "9"],
        ["--synthetic", "--synthetic-slices", "4", "--synthetic-size", "32", "--val-slices", "x"],
        ["--pairs-images", "nowhere-images", "--pairs-masks", "nowhere-masks"],
        ["--pairs-images", "nowhere-images"],
    ],
)
def test_cli_main_bad_input(tmp_path: Path, capsys, cli_module, args: list[str]) -> None:
    assert cli_module.main([*args, "--out", str(tmp_path / "em")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "em").exists()


def test_cli_defaults(cli_module) -> None:
    assert cli_module.DEFAULT_OUT == REPO / "data" / "em"
    assert issubclass(DataError, UserError)
