"""On-disk benchmark data: fixtures written in the exact formats users have (CIFAR-100 pickles, SVHN .mat, image
trees, an ImageNet wnid tree with both val layouts, OpenOOD image lists), loaders checked against the pixels and
labels written, `data check`, bad input, presets, and a quick end-to-end run on the fixture data."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.cache import Cache
from harness.classifier.models import build_classifier
from harness.cli import main
from harness.data.benchmarks import load_benchmark
from harness.data.check import check_data
from harness.data.readers import read_wnids
from harness.data.sets import FileImageSet, ImageSet
from harness.data.spec import load_spec
from harness.errors import HarnessError

CIFAR = load_spec("cifar100")
IMAGENET = load_spec("imagenet100")
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


# --- fixture writers ------------------------------------------------------------------------------------------------

def write_cifar100(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cifar-100-python/{train,test,meta} as the official archive has them (latin1 pickles of dicts)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = np.repeat(np.arange(100), per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / split, "wb") as handle:
            pickle.dump({"data": data, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                         "filenames": [f"img{i}.png" for i in range(len(labels))], "batch_label": split}, handle,
                        protocol=2)
        written[split] = (data, labels)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": list(CIFAR.class_names),
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, handle, protocol=2)
    return written


def write_svhn(root: Path, count: int = 12, seed: int = 1) -> np.ndarray:
    from scipy.io import savemat

    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
    (root / "svhn").mkdir(parents=True)
    savemat(root / "svhn" / "test_32x32.mat", {"X": pixels, "y": np.arange(1, count + 1).reshape(-1, 1) % 10 + 1})
    return pixels


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int, suffix: str = ".png",
                 mode: str = "RGB") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        shape = (size[1], size[0], 3) if mode in ("RGB",) else (size[1], size[0])
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        if mode not in ("RGB", "L"):
            image = image.convert(mode)
        files.append(folder / f"{i:04d}{suffix}")
        image.save(files[-1])
    return files


def write_cifar_benchmark(root: Path) -> dict:
    written = {"cifar": write_cifar100(root), "svhn": write_svhn(root)}
    write_images(root / "dtd/images/banded", 4, (48, 40), 2)
    write_images(root / "dtd/images/zigzagged", 4, (40, 56), 3, ".jpg")
    write_images(root / "places365_test", 6, (64, 48), 4, ".jpg")
    write_images(root / "LSUN_C/test", 6, (36, 36), 5)
    write_images(root / "iSUN/iSUN_patches", 6, (32, 32), 6, ".jpeg")
    return written


def small_spec(tmp_path: Path, base: str = "cifar100", **changes) -> Path:
    """The benchmark's spec with expected counts lowered to the fixture's sizes (so sets read as found)."""
    raw = json.loads(Path(f"datasets/{base}.json").read_text())
    for entry in [raw["id"], *raw["ood"]]:
        entry["expected"] = ({k: 1 for k in entry["expected"]} if isinstance(entry.get("expected"), dict) else 1)
        for location in entry.get("locations", []):
            if "classes_file" in location:
                location["min_per_class"] = 1
    if base == "imagenet100":
        raw["class_names"] = str(Path("datasets/imagenet100_classes.txt").resolve())
    raw.update(changes)
    path = tmp_path / f"{base}_small.json"
    path.write_text(json.dumps(raw))
    return path


def torchvision_resize_crop(file: Path, size: int, resize: int | None = None) -> np.ndarray:
    from torchvision import transforms as T

    with Image.open(file) as image:
        return np.asarray(T.Compose([T.Resize(resize or size), T.CenterCrop(size)])(image.convert("RGB")))


def pixels(image_set) -> np.ndarray:
    return torch.cat(list(image_set.batches(64))).numpy()


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, write_cifar_benchmark(root)


# --- loaders against what was written -----------------------------------------------------------------------------

def test_cifar100_pickles_svhn_and_image_trees_load_the_written_pixels(cifar_root, tmp_path):
    root, written = cifar_root
    bench = load_benchmark(CIFAR, Cache(tmp_path / "cache"), root)
    data, labels = written["cifar"]["train"]
    assert len(bench.train) == 300 and isinstance(bench.train, ImageSet)
    assert np.array_equal(bench.train.images.numpy(), data.reshape(-1, 3, 32, 32))
    assert np.array_equal(bench.train.labels.numpy(), labels)
    assert np.array_equal(bench.test.labels.numpy(), written["cifar"]["test"][1])
    assert np.array_equal(pixels(bench.ood["svhn"]), written["svhn"].transpose(3, 2, 0, 1))
    textures = sorted((root / "dtd/images").rglob("*.*"))
    expected = np.stack([torchvision_resize_crop(f, 32) for f in textures]).transpose(0, 3, 1, 2)
    assert np.array_equal(pixels(bench.ood["textures"]), expected)  # Resize(32) + CenterCrop(32), as torchvision
    lsun = sorted((root / "LSUN_C").rglob("*.png"))
    assert np.array_equal(pixels(bench.ood["lsun"])[0], np.asarray(Image.open(lsun[0]))[2:34, 2:34].transpose(2, 0, 1))
    isun = sorted((root / "iSUN").rglob("*.jpeg"))
    assert np.array_equal(pixels(bench.ood["isun"])[0], np.asarray(Image.open(isun[0])).transpose(2, 0, 1))
    assert bench.provenance["sets"]["svhn"] == {"source": "svhn_mat", "path": "svhn/test_32x32.mat", "used": 12,
                                                "available": 12, "group": "far"}


def test_eval_subsets_and_the_quick_preset_are_drawn_by_seed(cifar_root, tmp_path):
    root, _ = cifar_root
    raw = json.loads(small_spec(tmp_path).read_text())
    raw["ood"][1]["eval_count"] = 5
    raw["presets"]["quick"]["max_train"] = 50
    (tmp_path / "s.json").write_text(json.dumps(raw))
    spec = load_spec(str(tmp_path / "s.json"))
    one = load_benchmark(spec, Cache(tmp_path / "c1"), root, spec.preset("quick"))
    two = load_benchmark(spec, Cache(tmp_path / "c2"), root, spec.preset("quick"))
    assert len(one.train) == 50 and len(one.ood["svhn"]) == 5 and len(one.test) == 100
    assert torch.equal(one.ood["svhn"].images, two.ood["svhn"].images)
    assert one.provenance["sets"]["svhn"] == {"source": "svhn_mat", "path": "svhn/test_32x32.mat", "used": 5,
                                              "available": 12, "subset_seed": 0, "group": "far"}
    assert one.provenance["preset"] == "quick"
    with pytest.raises(HarnessError, match="no preset 'fast'"):
        spec.preset("fast")


def test_mixed_image_modes_are_converted_to_rgb(tmp_path):
    grey = write_images(tmp_path / "mixed", 1, (32, 32), 7, mode="L")[0]
    rgba = tmp_path / "mixed" / "rgba.png"
    Image.fromarray(np.full((32, 32, 4), 200, dtype=np.uint8)).save(rgba)
    palette = tmp_path / "mixed" / "palette.gif"
    Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).convert("P").save(palette)
    from harness.data.readers import image_tree

    lazy = image_tree(name="mixed", data_root=tmp_path, path="mixed", size=32, channels=3, preprocess="none")
    batch = lazy.gather(range(len(lazy))).numpy()
    by_name = dict(zip([Path(f).name for f in lazy.files], batch, strict=True))
    grey_pixels = np.asarray(Image.open(grey))
    assert all(np.array_equal(by_name[grey.name][c], grey_pixels) for c in range(3))
    assert (by_name["rgba.png"] == 200).all()
    assert np.array_equal(by_name["palette.gif"], np.asarray(Image.open(palette).convert("RGB")).transpose(2, 0, 1))


def write_imagenet(root: Path, flat_val: bool) -> list[str]:
    wnids = read_wnids(Path("datasets/imagenet100_classes.txt"))
    for i, wnid in enumerate(wnids[:100]):
        write_images(root / "imagenet/train" / wnid, 2, (40, 30), i, ".JPEG")
    write_images(root / "imagenet/train/n99999999", 1, (40, 30), 999, ".JPEG")  # a class outside ImageNet-100
    if flat_val:
        rows = ["ImageId,PredictionString"]
        for i, wnid in enumerate([*wnids, "n99999999"]):
            file = write_images(root / "imagenet/val_tmp", 1, (50, 40), 1000 + i, ".JPEG")[0]
            target = root / "imagenet/val" / f"ILSVRC2012_val_{i:08d}.JPEG"
            target.parent.mkdir(parents=True, exist_ok=True)
            file.rename(target)
            rows.append(f"ILSVRC2012_val_{i:08d},{wnid} 1 2 3 4")
        (root / "imagenet/val_tmp").rmdir()
        (root / "imagenet/LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    else:
        for i, wnid in enumerate(wnids):
            write_images(root / "imagenet/val" / wnid, 1, (50, 40), 1000 + i, ".JPEG")
    return wnids


@pytest.mark.parametrize("flat_val", [False, True])
def test_imagenet100_is_carved_by_wnid_with_either_val_layout(tmp_path, flat_val):
    wnids = write_imagenet(tmp_path, flat_val)
    spec = load_spec(str(small_spec(tmp_path, "imagenet100")))
    check = check_data(spec, tmp_path)
    assert [r.status for r in check.rows[:2]] == ["found", "found"]
    from harness.data.readers import imagenet_wnids

    sets = imagenet_wnids(data_root=tmp_path, path="imagenet", classes_file="imagenet100_classes.txt", size=224,
                          channels=3, val_label_files=["LOC_val_solution.csv"], resize=256)
    train, test = sets["train"], sets["test"]
    assert isinstance(train, FileImageSet) and len(train) == 200 and len(test) == 100
    assert train.labels.tolist() == [i for i in range(100) for _ in range(2)]
    assert sorted(test.labels.tolist()) == list(range(100))
    first = int(np.flatnonzero(test.labels.numpy() == 0)[0])
    assert flat_val or wnids[0] in test.files[first]
    batch = test.gather([first])
    assert batch.shape == (1, 3, 224, 224) and batch.dtype == torch.uint8
    expected = torchvision_resize_crop(Path(test.files[first]), 224, 256).transpose(2, 0, 1)
    assert np.array_equal(batch[0].numpy(), expected)  # Resize(256) + CenterCrop(224)


def test_imagenet_class_folders_not_matching_the_wnid_list_fail_in_one_line(tmp_path, capsys):
    wnids = read_wnids(Path("datasets/imagenet100_classes.txt"))
    for wnid in wnids[:97]:
        write_images(tmp_path / "imagenet/train" / wnid, 1, (8, 8), 0, ".JPEG")
    (tmp_path / "imagenet/val").mkdir()
    spec = small_spec(tmp_path, "imagenet100")
    code = main(["run", "--methods", "msp", "--benchmark", str(spec), "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "lacks 3 of the 100 ImageNet-100 class folders" in err and wnids[97] in err
    assert not (tmp_path / "out").exists()


def test_openood_imglists_are_read_relative_to_images_classic(tmp_path):
    files = write_images(tmp_path / "images_classic/svhn/test", 5, (32, 32), 8)
    lists = tmp_path / "benchmark_imglist/cifar100"
    lists.mkdir(parents=True)
    (lists / "test_svhn.txt").write_text("".join(f"svhn/test/{f.name} -1\n" for f in files))
    id_files = write_images(tmp_path / "images_classic/cifar100/test", 4, (32, 32), 9)
    (lists / "test_cifar100.txt").write_text("".join(f"cifar100/test/{f.name} {i * 7}\n"
                                                    for i, f in enumerate(id_files)))
    from harness.data.readers import openood_imglist, probe_openood_imglist

    ood = openood_imglist(name="svhn", data_root=tmp_path, size=32, channels=3, imglist=str(lists / "test_svhn.txt"),
                          preprocess="none")
    assert np.array_equal(pixels(ood), np.stack([np.asarray(Image.open(f)) for f in files]).transpose(0, 3, 1, 2))
    sets = openood_imglist(name="id", data_root=tmp_path, size=32, channels=3, preprocess="none",
                           imglists={"test": "benchmark_imglist/cifar100/test_cifar100.txt"})
    assert sets["test"].labels.tolist() == [0, 7, 14, 21]
    (lists / "train_cifar100.txt").write_text((lists / "test_cifar100.txt").read_text())
    raw = json.loads(small_spec(tmp_path).read_text())
    raw["ood"] = [entry for entry in raw["ood"] if entry["name"] == "svhn"]
    (tmp_path / "openood.json").write_text(json.dumps(raw))
    spec = load_spec(str(tmp_path / "openood.json"))
    check = check_data(spec, tmp_path)
    assert [(r.set, r.status) for r in check.rows] == [("ID train", "found"), ("ID test", "found"), ("svhn", "found")]
    bench = load_benchmark(spec, Cache(tmp_path / "cache"), tmp_path, check=check)
    assert bench.test.labels.tolist() == [0, 7, 14, 21] and len(bench.ood["svhn"]) == 5
    assert bench.provenance["sets"]["svhn"]["source"] == "openood_imglist"

    files[0].unlink()
    probe = probe_openood_imglist(data_root=tmp_path, imglist="benchmark_imglist/cifar100/test_svhn.txt")
    assert (probe.status, probe.count, probe.expected) == ("incomplete", 4, 5)


# --- data check and bad input -----------------------------------------------------------------------------------

def test_data_check_reports_found_missing_incomplete_and_corrupted(tmp_path, capsys):
    write_cifar_benchmark(tmp_path)
    spec = small_spec(tmp_path)
    assert main(["data", "check", "--benchmark", str(spec), "--data-root", str(tmp_path)]) == 0
    assert "7 of 7 sets ready" in capsys.readouterr().out

    (tmp_path / "iSUN/iSUN_patches/0000.jpeg").write_bytes(b"not a jpeg at all")
    for file in (tmp_path / "LSUN_C").rglob("*.png"):
        file.unlink()
    assert main(["data", "check", "--benchmark", "cifar100", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "incomplete" in rows["svhn"] and "26032" in rows["svhn"]
    assert "incomplete" in rows["ID train"] and "300" in rows["ID train"] and "50000" in rows["ID train"]
    assert "missing" in rows["lsun"] and str(tmp_path / "LSUN_C") in rows["lsun"]
    assert "corrupted" in rows["isun"]
    assert "cannot read image" in out and "0000.jpeg" in out
    assert "expected layout: LSUN_C/" in out and "from: LSUN (crop) of ODIN" in out


def test_run_refuses_missing_incomplete_and_corrupted_data_before_writing(tmp_path, capsys):
    args = ["run", "--methods", "msp", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--benchmark", "cifar100", "--data-root", str(tmp_path / "nope")]) == 2
    assert "data root" in capsys.readouterr().err

    write_cifar_benchmark(tmp_path / "d")
    assert main([*args, "--benchmark", "cifar100", "--data-root", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is incomplete (300 of 50000 images)" in err and "--allow-incomplete" in err

    spec = str(small_spec(tmp_path))
    os.remove(tmp_path / "d/svhn/test_32x32.mat")
    assert main([*args, "--benchmark", spec, "--data-root", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "set 'svhn' is missing" in err and "svhn/test_32x32.mat" in err

    (tmp_path / "d/svhn/test_32x32.mat").write_bytes(b"MATLAB 5.0 garbage")
    assert main([*args, "--benchmark", spec, "--data-root", str(tmp_path / "d")]) == 2
    assert "corrupted" in (err := capsys.readouterr().err) and "test_32x32.mat" in err

    write_svhn(tmp_path / "e")
    (tmp_path / "d/svhn/test_32x32.mat").write_bytes((tmp_path / "e/svhn/test_32x32.mat").read_bytes())
    test_pickle = tmp_path / "d/cifar-100-python/test"
    test_pickle.write_bytes(test_pickle.read_bytes()[:1000])  # a truncated download
    assert main([*args, "--benchmark", spec, "--data-root", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "cannot read CIFAR pickle" in err and "cifar-100-python/test" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_a_truncated_jpeg_is_named_when_decoded(tmp_path):
    file = write_images(tmp_path / "t", 1, (64, 64), 3, ".jpg")[0]
    file.write_bytes(file.read_bytes()[:300])
    lazy = FileImageSet("t", (str(file),), 32, 3)
    with pytest.raises(HarnessError, match=r"cannot read image .*0000\.jpg"):
        lazy.gather([0])


def test_unresized_sets_reject_images_smaller_than_the_benchmark(tmp_path):
    file = write_images(tmp_path / "small", 1, (28, 28), 3)[0]
    with pytest.raises(HarnessError, match=r"0000\.png is 28x28, smaller than 32x32"):
        FileImageSet("s", (str(file),), 32, 3, preprocess="none").gather([0])


# --- models and presets -------------------------------------------------------------------------------------------

def test_cifar_resnet34_matches_the_reference_parameter_count_and_takes_32px():
    model = build_classifier("resnet34_cifar", 3, 100, CIFAR.mean, CIFAR.std)
    assert sum(p.numel() for p in model.parameters()) == 21_328_292
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    wrn = build_classifier("wrn40_2", 3, 10, CIFAR.mean, CIFAR.std)
    assert sum(p.numel() for p in wrn.parameters()) == 2_243_546  # WRN-40-2 of the Outlier-Exposure code
    assert wrn.feature_dim == 128


def test_timm_resnet34_initialises_from_a_local_checkpoint(tmp_path):
    source = build_classifier("resnet34_timm", 3, 1000, IMAGENET.mean, IMAGENET.std)
    state = {k: v for k, v in source.backbone.net.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    torch.save({"state_dict": state}, tmp_path / "r34.pth")
    loaded = build_classifier("resnet34_timm", 3, 100, IMAGENET.mean, IMAGENET.std,
                              pretrained=str(tmp_path / "r34.pth"))
    assert torch.equal(loaded.backbone.net.conv1.weight, source.backbone.net.conv1.weight)
    torch.save({"conv1.weight": state["conv1.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(HarnessError, match="lacks .* backbone weights"):
        build_classifier("resnet34_timm", 3, 100, IMAGENET.mean, IMAGENET.std, pretrained=str(tmp_path / "partial.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(HarnessError, match="does not fit this backbone"):
        build_classifier("resnet34_timm", 3, 100, IMAGENET.mean, IMAGENET.std, pretrained=str(tmp_path / "bad.pth"))


def test_paper_recipes_and_quick_preset_scale_only_epochs():
    paper, quick = CIFAR.preset("paper"), CIFAR.preset("quick")
    assert paper.scale_epochs(CIFAR.classifier["epochs"]) == 100 and quick.scale_epochs(100) == 2
    assert quick.scale_epochs(10) == 1  # never below one epoch
    paper = CIFAR.classifier
    assert (paper["backbone"], paper["lr"], paper["batch_size"], paper["weight_decay"], paper["nesterov"]) == \
        ("resnet34_cifar", 0.1, 160, 0.0005, True)
    inet = {**IMAGENET.classifier, "epochs": IMAGENET.preset("paper").scale_epochs(IMAGENET.classifier["epochs"])}
    assert (inet["backbone"], inet["lr"], inet["epochs"], inet["random_resized_crop"]) == \
        ("resnet34_timm", 0.001, 20, True)
    assert len(IMAGENET.class_names) == 100 and IMAGENET.class_names[0] == "n01498041"


# --- end to end ---------------------------------------------------------------------------------------------------

def test_quick_run_on_fixture_cifar100_end_to_end(cifar_root, tmp_path, capsys):
    root, _ = cifar_root
    code = main(["run", "--methods", "msp,knn", "--benchmark", "cifar100", "--preset", "quick", "--allow-incomplete",
                 "--data-root", str(root), "--set", "classifier.backbone=resnet_small",
                 "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    record = json.loads(next((tmp_path / "out/records/cifar100").rglob("seed0.json")).read_text())
    assert record["classifier_config"]["epochs"] == 2 and "preset=quick" in record["label"]
    assert set(record["metrics"]) == {"textures", "svhn", "places365", "lsun", "isun"}
    assert record["eval_sizes"] == {"ID": 100, "textures": 8, "svhn": 12, "places365": 6, "lsun": 6, "isun": 6}
    assert record["data"]["preset"] == "quick" and record["data"]["incomplete"]["ID train"] == "300 of 50000"
    assert record["data"]["sets"]["textures"]["source"] == "image_tree"
    board = (tmp_path / "out/leaderboards/cifar100.md").read_text()
    assert board.index("| msp(") < board.index("## Reported in the papers") < board.index("| NCIS (reported)")


def test_results_do_not_depend_on_global_random_state_or_on_the_methods_run_before(cifar_root, tmp_path):
    """A cached classifier is a pure function of its key: its initial weights come from the run seed."""
    root, _ = cifar_root

    def knn_record(methods: str, name: str) -> dict:
        code = main(["run", "--methods", methods, "--benchmark", "cifar100", "--preset", "quick", "--allow-incomplete",
                     "--data-root", str(root), "--set", "classifier.backbone=resnet_small", "--out",
                     str(tmp_path / name), "--cache-dir", str(tmp_path / f"cache-{name}"), "--device", "cpu"])
        assert code == 0
        return json.loads(next((tmp_path / name / "records/cifar100").rglob("knn*/seed0.json")).read_text())

    torch.manual_seed(123)
    first = knn_record("msp,knn", "a")
    torch.manual_seed(7)
    torch.rand(10_000)
    second = knn_record("knn", "b")
    assert first["metrics"] == second["metrics"] and first["id_accuracy"] == second["id_accuracy"]


def test_the_data_root_comes_from_the_environment_and_only_matters_for_on_disk_benchmarks(monkeypatch, cifar_root):
    from harness.plan import RunRequest, plan

    monkeypatch.setenv("OODBENCH_DATA", "/nonexistent/ood")
    assert plan(RunRequest(methods=["msp"])).data_root is None  # mnist5k is embedded
    with pytest.raises(HarnessError, match=r"data root /nonexistent/ood \(from \$OODBENCH_DATA\) does not exist"):
        plan(RunRequest(methods=["msp"], benchmark="cifar100"))
    monkeypatch.setenv("OODBENCH_DATA", str(cifar_root[0]))
    planned = plan(RunRequest(methods=["msp"], benchmark="cifar100", allow_incomplete=True))
    assert planned.data_root == cifar_root[0].resolve() and not planned.data.problems(allow_incomplete=True)
