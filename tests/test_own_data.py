"""Your own data: `--id NAME=DIR` (ImageFolder class folders or OpenOOD image lists) replaces a benchmark's ID set
and keeps its OOD sets; `--ood GROUP:NAME=PATH` puts an extra OOD set in a group; bad input is one line."""

import json

import pytest

from harness.cli import main
from tests.regress_helpers import TINY_PRESET, write_tiny_spec
from tests.test_hardening import one_line_error
from tests.test_real_data import write_images

CLASSES = ("circle", "square", "triangle")


def image_folder_id(root, per_class=(8, 4)):
    for split, count in zip(("train", "test"), per_class, strict=True):
        for index, name in enumerate(CLASSES):
            write_images(root / split / name, count, (40, 36), seed=10 * index + count, mode="L")
    return root


def run(tmp_path, *extra):
    spec = write_tiny_spec(tmp_path)
    return main(["run", "--methods", "msp", "--benchmark", str(spec), "--preset", TINY_PRESET, "--set",
                 "classifier.epochs=1", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                 "--threads", "1", *extra])


def records(tmp_path, benchmark):
    return [json.loads(p.read_text()) for p in (tmp_path / "out/records" / benchmark).rglob("seed0.json")]


def test_an_image_folder_id_set_replaces_the_benchmark_s_and_keeps_its_ood_sets(tmp_path):
    assert run(tmp_path, "--id", f"shapes={image_folder_id(tmp_path / 'shapes')}",
               "--ood", f"near:blobs={tmp_path / 'shapes/test/circle'}") == 0
    [record] = records(tmp_path, "tiny5k-id-shapes")
    assert record["eval_sizes"]["ID"] == 12 and record["eval_sizes"]["blobs"] == 4
    assert {"glyphs", "noise", "blobs"} <= set(record["metrics"])  # the benchmark's OOD sets, and the extra one
    assert record["data"]["sets"]["train"]["used"] == 24 and record["data"]["sets"]["blobs"]["group"] == "near"
    assert record["data"]["sets"]["glyphs"]["group"] == "near"  # the spec's
    near = [record["metrics"][name]["auroc"] for name in ("glyphs", "blobs")]
    assert record["group_average"]["near"]["auroc"] == pytest.approx(sum(near) / 2)
    assert 0.0 <= record["id_accuracy"] <= 1.0


def test_an_openood_image_list_id_set_reads_its_class_indices(tmp_path):
    root = tmp_path / "listed"
    for split, count in (("train", 6), ("test", 3)):
        lines = []
        for label in range(2):
            for file in write_images(root / "images" / split / str(label), count, (32, 32), seed=label, mode="L"):
                lines.append(f"{file.relative_to(root)} {label}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    assert run(tmp_path, "--id", f"listed={root}") == 0
    [record] = records(tmp_path, "tiny5k-id-listed")
    assert record["eval_sizes"]["ID"] == 6 and record["data"]["sets"]["train"]["used"] == 12


@pytest.mark.parametrize("case, fragment", [
    ("neither", "holds neither train/ and test/ class folders"),
    ("empty", "0 class(es) found"),
    ("unreadable", "cannot read image"),
    ("stray class", "class folder 'hexagon' is not one of the 3 classes"),
    ("bad list", "line 1 is not '<image path> <label>'"),
    ("ood label", "has an OOD label (-1); an ID list gives one '<image path> <class index>' per line"),
    ("bad group", "group 'middle' must be one of near, far"),
])
def test_bad_own_data_is_one_line_and_writes_nothing(tmp_path, capsys, case, fragment):
    root = tmp_path / "mine"
    root.mkdir()
    extra = ["--id", f"mine={root}"]
    if case == "empty":
        (root / "train").mkdir()
        (root / "test").mkdir()
    elif case == "unreadable":
        image_folder_id(root)
        (root / "test/square/0000.png").write_bytes(b"not an image")
    elif case == "stray class":
        image_folder_id(root)
        write_images(root / "test/hexagon", 2, (32, 32), seed=1, mode="L")
    elif case == "bad list":
        (root / "train.txt").write_text("images/a.png three\n")
        (root / "test.txt").write_text("images/b.png 0\n")
    elif case == "ood label":
        (root / "train.txt").write_text("images/a.png 0\nimages/b.png -1\n")
        (root / "test.txt").write_text("images/c.png 0\n")
    elif case == "bad group":
        extra = ["--ood", f"middle:blobs={root}"]
    one_line_error(capsys, run(tmp_path, *extra), fragment)
    assert not (tmp_path / "out").exists()


def test_a_model_whose_head_does_not_match_the_own_id_classes_is_one_line(tmp_path, capsys):
    root = image_folder_id(tmp_path / "shapes")  # 3 classes; the factory's model has a 10-class head
    code = run(tmp_path, "--id", f"shapes={root}", "--model", "tests.own_model_helpers:make_openood_net",
               "--mean", "0.5", "--std", "0.25")
    one_line_error(capsys, code, "tiny5k-id-shapes has 3 classes")
    assert not (tmp_path / "out").exists()
