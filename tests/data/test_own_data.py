"""Your own data: intensities recorded by the preparation and applied by predict, data set names,
image/mask folders with instance labels, and the command that makes a new experiment folder.

The data is a 16-bit image (128 x 128, a grey-level gradient over it so that each quadrant has
its own min..max) cut into its four quadrants; a tiny model (base_channels 4, 1 epoch) is
trained on them once for the module through the real commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet.checkpoint import load_checkpoint, save_checkpoint
from unet.predict import cli as predict_cli
from unet.prep.em import choose_intensity, synthetic_em_stack, to_uint8

from ..conftest import REPO, run_command
from ..helpers.experiments import trainer_in_process

TINY = ["-o", "base_channels=4", "-o", "num_epochs=1", "-o", "crop_size=[64,64]", "-o", "batch_size=4",
        "-o", "val_batch_size=4", "-o", "overlay_every=1000"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def sixteen_bit_image() -> tuple[np.ndarray, np.ndarray]:
    """A 128 x 128 uint16 image (EM-like texture times a gradient, 300..~3900) and its 0/255 labels."""
    volume, labels = synthetic_em_stack(1, 128, seed=3)
    ramp = np.linspace(1.0, 3.0, 128)[None, :] * np.linspace(1.0, 1.5, 128)[:, None]
    image = (300 + volume[0].astype(np.float64) * 8 * ramp).astype(np.uint16)
    return image, labels[0]


def quadrants(array: np.ndarray) -> np.ndarray:
    """The four 64 x 64 quadrants of a 128 x 128 array as an (4, 64, 64) stack."""
    return np.stack([array[:64, :64], array[:64, 64:], array[64:, :64], array[64:, 64:]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The quadrant stack prepared by ``em_prepare.py`` (no resize, no crop, quadrant 3 for
    validation) and a tiny model trained on it by the EM trainer."""
    root = tmp_path_factory.mktemp("own")
    image, labels = sixteen_bit_image()
    tifffile.imwrite(root / "image.tif", image)
    tifffile.imwrite(root / "quadrant0.tif", image[:64, :64])
    tifffile.imwrite(root / "volume.tif", quadrants(image), photometric="minisblack")
    tifffile.imwrite(root / "labels.tif", quadrants(labels), photometric="minisblack")
    data = root / "data"
    prep = run_command(["preprocessing/em_prepare.py", "--volume", str(root / "volume.tif"), "--labels",
                        str(root / "labels.tif"), "--resize", "0", "--crop", "0", "--val-slices", "3",
                        "--out", str(data)], cwd=REPO)
    assert prep.returncode == 0, prep.stderr
    folder = root / "experiments" / "exp"
    folder.parent.mkdir()
    made = run_command(["-m", "unet.new_experiment", "em/quickstart", str(folder), "--dataset-path", str(data),
                        *TINY], cwd=REPO)
    assert made.returncode == 0, made.stderr
    monkeypatch = pytest.MonkeyPatch()
    try:
        status = trainer_in_process(monkeypatch, folder, ["-f", "config.yaml", "-t", "UNET"])
    finally:
        monkeypatch.undo()
    assert status == 0
    return {"root": root, "data": data, "run": folder / "runs" / "exp", "prep": prep, "image": image,
            "folder": folder, "made": made}


def test_choose_intensity_rules() -> None:
    eight = np.array([[0, 200]], dtype=np.uint8)
    sixteen = np.array([[100, 900]], dtype=np.uint16)
    other = np.array([[300, 1200]], dtype=np.uint16)
    assert choose_intensity([eight])["intensity_scaling"] == "uint8"
    assert choose_intensity([sixteen, other]) == {"intensity_scaling": "range", "intensity_range": [100.0, 1200.0],
                                                  "intensity_dtypes": ["uint16"]}
    assert choose_intensity([sixteen], "per-file")["intensity_range"] is None
    fixed = choose_intensity([eight, sixteen], value_range=(0, 4095))
    assert fixed["intensity_range"] == [0.0, 4095.0] and fixed["intensity_dtypes"] == ["uint16", "uint8"]
    # one range: a file's grey levels mean the same whatever else it holds
    np.testing.assert_array_equal(to_uint8(other, "range", [100, 1200]), [[46, 255]])
    np.testing.assert_array_equal(to_uint8(other, "per-file", None), [[0, 255]])
    np.testing.assert_array_equal(to_uint8(eight, "per-file", None), eight)


def test_preparation_records_and_says_the_range(trained: dict) -> None:
    manifest = json.loads((trained["data"] / "prepare.json").read_text())
    image = trained["image"]
    assert manifest["intensity_scaling"] == "range" and manifest["intensity_dtypes"] == ["uint16"]
    assert manifest["intensity_range"] == [float(image.min()), float(image.max())]
    lo, hi = manifest["intensity_range"]
    assert f"intensity: uint16 grey levels scaled from {lo:g}..{hi:g} to 0..255 for every file" \
        in trained["prep"].stdout
    record = load_checkpoint(trained["run"] / "best.pt")["input_transform"]
    assert record["version"] == 2 and record["intensity_scaling"] == "range"
    assert record["intensity_range"] == [lo, hi] and record["intensity_dtypes"] == ["uint16"]


def _probabilities(tmp_path: Path, run: Path, source: Path, name: str, *extra: str) -> np.ndarray:
    out = tmp_path / name
    assert predict_cli.main(["-m", str(run), "-i", str(source), "-o", str(out), "--probabilities", "--step", "1",
                             "--no-progress", *extra]) == 0
    return tifffile.imread(out / "probabilities" / source.name)


def test_a_quadrant_file_gets_the_input_it_has_inside_the_whole_image(trained: dict, tmp_path: Path) -> None:
    """Windows of 64 at step 1 cut the whole image into exactly its quadrants, so the top-left
    quadrant saved as its own file must give the same probabilities as inside the whole image:
    its grey levels are scaled by the training range, not by the file's own."""
    root, run = trained["root"], trained["run"]
    whole = _probabilities(tmp_path, run, root / "image.tif", "whole")
    alone = _probabilities(tmp_path, run, root / "quadrant0.tif", "alone")
    np.testing.assert_allclose(alone, whole[:64, :64], atol=1e-5)
    manifest = json.loads((tmp_path / "alone" / "predict.json").read_text())
    assert manifest["options"]["intensity"] == "training"
    # each file's own min..max (the old behaviour) moves the quadrant's grey levels
    per_file = _probabilities(tmp_path, run, root / "quadrant0.tif", "per_file", "--intensity", "per-file")
    assert np.abs(per_file - whole[:64, :64]).max() > 1e-3


def test_old_checkpoint_keeps_per_file_scaling_with_a_note(trained: dict, tmp_path: Path, capsys) -> None:
    state = load_checkpoint(trained["run"] / "best.pt")
    record = state["input_transform"]
    state["input_transform"] = {key: value for key, value in record.items() if not key.startswith("intensity")}
    state["input_transform"].update(version=1, intensity="uint8 / 255")
    save_checkpoint(tmp_path / "old.pt", state)
    capsys.readouterr()
    old = _probabilities(tmp_path, tmp_path / "old.pt", trained["root"] / "quadrant0.tif", "old")
    err = capsys.readouterr().err
    assert "records no training intensity range" in err and "quadrant0.tif (uint16)" in err
    per_file = _probabilities(tmp_path, trained["run"], trained["root"] / "quadrant0.tif", "new", "--intensity",
                              "per-file")
    np.testing.assert_array_equal(old, per_file)


# --------------------------------------------------------------------------- names, pairs, instance labels


def _instance_labels(labels: np.ndarray) -> np.ndarray:
    """0/255 labels -> one value per connected object (uint16, 1..n), as instance labels are."""
    from scipy import ndimage

    objects, _ = ndimage.label(labels > 0)
    return objects.astype(np.uint16)


def test_user_data_is_named_by_its_source_and_never_isbi(trained: dict) -> None:
    from unet.results.tables import describe_data

    manifest = json.loads((trained["data"] / "prepare.json").read_text())
    assert manifest["name"] == "volume" and manifest["origin"] == "user"
    out = trained["prep"].stdout
    assert out.startswith("prepared 'volume' (--name sets it) in ") and "ISBI" not in out
    described = describe_data(trained["data"])
    assert "data set 'volume'" in described and "public" not in described and "ISBI" not in described
    log = (trained["run"] / "train.log").read_text()
    assert "ISBI" not in log


def test_image_and_mask_folders_with_instance_labels(tmp_path: Path) -> None:
    """A folder of 16-bit TIFF tiles and a folder of instance-label masks (PNG and TIFF): refused
    without --binarize with a hint that speaks of objects, not membranes; prepared with it, with
    the given name, one intensity range over all tiles and masks = label > 0."""
    image, labels = sixteen_bit_image()
    images, masks = tmp_path / "nuclei" / "images", tmp_path / "nuclei" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for k, (tile, label) in enumerate(zip(quadrants(image), quadrants(_instance_labels(labels)), strict=True)):
        tifffile.imwrite(images / f"tile{k}.tif", tile)
        if k % 2:
            tifffile.imwrite(masks / f"tile{k}.tif", label)
        else:
            from PIL import Image

            Image.fromarray(label.astype(np.uint16)).save(masks / f"tile{k}.png")
    base = ["preprocessing/em_prepare.py", "--pairs-images", str(images), "--pairs-masks", str(masks), "--crop", "0"]
    refused = run_command([*base, "--out", str(tmp_path / "refused")], cwd=REPO)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: mask ") and "is not binary" in line and "--binarize" in line
    assert "membrane" not in line and "cell" not in line
    done = run_command([*base, "--binarize", "--name", "nuclei (DAPI)", "--val-names", "tile3",
                        "--out", str(tmp_path / "data")], cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("prepared 'nuclei (DAPI)' (--name sets it) in ")
    manifest = json.loads((tmp_path / "data" / "prepare.json").read_text())
    assert manifest["name"] == "nuclei (DAPI)" and manifest["binarize"] is True
    assert manifest["intensity_range"] == [float(image.min()), float(image.max())]
    assert manifest["val_names"] == ["tile3"] and manifest["input_shape"] == [4, 64, 64]
    from unet.data.pairs import read_grey_png, read_mask_png

    prepared = read_grey_png(tmp_path / "data" / "train" / "images" / "tile1.png")
    np.testing.assert_array_equal(prepared, to_uint8(quadrants(image)[1], "range", manifest["intensity_range"]))
    mask = read_mask_png(tmp_path / "data" / "train" / "masks" / "tile1.png")
    np.testing.assert_array_equal(mask, quadrants(labels)[1] > 0)


# --------------------------------------------------------------------------- a new experiment folder


def test_new_experiment_copies_the_config_and_links_the_trainer(trained: dict, tmp_path: Path) -> None:
    import yaml

    folder = trained["folder"]
    config = yaml.safe_load((folder / "config.yaml").read_text())["UNET"]
    assert config["dataset_path"] == "../../data" and (folder / config["dataset_path"]).resolve() == trained["data"]
    assert config["crop_size"] == [64, 64] and config["quantization"] == "FIXED" and config["base_channels"] == 4
    link = folder / "em_unet.py"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.resolve() == (REPO / "EM_BASE" / "em_unet.py").resolve()
    last = trained["made"].stdout.splitlines()[-1]
    assert last == f"train it: cd {folder} && python em_unet.py -f config.yaml -t UNET"
    assert (trained["run"] / "best.pt").is_file()  # the trainer ran from it

    small = run_command(["-m", "unet.new_experiment", str(folder), str(tmp_path / "small"), "-o", "crop_size=[32,32]"],
                        cwd=tmp_path)
    assert small.returncode == 0, small.stderr
    assert "note: crop_size [32, 32] is smaller than the prepared images (64 x 64)" in small.stdout
    assert "-o crop_size=[64,64]" in small.stdout
    again = run_command(["-m", "unet.new_experiment", str(folder), str(tmp_path / "small")], cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip() == f"error: {tmp_path / 'small'} already exists; choose a " \
        "new folder name"
    bad = run_command(["-m", "unet.new_experiment", str(folder), str(tmp_path / "bad"), "-o", "lr=-1"], cwd=tmp_path)
    assert bad.returncode == 2 and "key 'lr' must be > 0" in bad.stderr and not (tmp_path / "bad").exists()


def test_one_2d_tiff_as_a_stack_points_to_the_pairs(tmp_path: Path) -> None:
    from unet.prep.em import is_isbi_release

    tifffile.imwrite(tmp_path / "one.tif", np.zeros((32, 32), np.uint16))
    result = run_command(["preprocessing/em_prepare.py", "--volume", str(tmp_path / "one.tif"), "--labels",
                          str(tmp_path / "one.tif"), "--out", str(tmp_path / "out")], cwd=REPO)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "is one 2-D image (32, 32)" in line and "--pairs-images and --pairs-masks" in line
    release = np.zeros((30, 512, 512), np.uint8)
    assert is_isbi_release("x/train-volume.tif", release)
    assert not is_isbi_release("x/nuclei.tif", release) and not is_isbi_release("train-volume.tif", release[:5])
