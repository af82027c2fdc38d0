"""Every registered method runs with its own defaults on every paper benchmark: planning (configs, start epochs,
checks against the recipe) for `paper` and `quick`, and a full `quick` run on fixture data written by the test (kept
tiny through --set: the point is that nothing is refused, not the numbers). New plugins join automatically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.plan import RunRequest, plan
from harness.registry import discover
from tests.test_real_data import small_spec, write_cifar_benchmark, write_imagenet, write_images

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("mnist5k", "cifar100", "imagenet100")
# The fixture benchmarks' own small backbone (mnist5k's spec already has one)
FIXTURE_CLASSIFIER = ["classifier.backbone=resnet_small"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """CIFAR-100 and ImageNet-100 fixtures in their on-disk formats, under one data root."""
    root = tmp_path_factory.mktemp("data")
    write_cifar_benchmark(root)
    write_imagenet(root, flat_val=False)
    for folder in ("iNaturalist", "SUN", "Places"):
        write_images(root / folder / "images", 4, (64, 48), 7)
    return root


@pytest.fixture(autouse=True)
def sd_model(monkeypatch):
    monkeypatch.setenv("OODBENCH_SD_MODEL", str(REPO / "models/tiny-sd-mnist5k"))


def image_methods() -> list[str]:
    """Every registered method for image benchmarks (text methods have their own end-to-end tests)."""
    return sorted(name for name, entry in discover().items() if "image" in entry.cls.modalities)


def test_every_method_plans_with_its_defaults_on_every_benchmark_and_preset(data_root):
    methods = image_methods()
    for benchmark in BENCHMARKS:
        for preset in ("paper", "quick"):
            planned = plan(RunRequest(methods=methods, benchmark=benchmark, preset=preset, data_root=data_root,
                                      allow_incomplete=True))
            assert [p.cls.info.name for p in planned.methods] == methods
            for item in planned.methods:  # defaults: the label is the bare name (plus the preset)
                assert item.label.split("(")[0] == item.cls.info.name, item.label


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(b, marks=pytest.mark.heavy) if b == "imagenet100" else b
                                  for b in BENCHMARKS])
def test_every_method_completes_a_quick_run_on_fixture_data(name, data_root, tmp_path):
    methods = image_methods()
    settings = []  # each method's smoke settings come from its class (`--smoke`)
    benchmark = name
    if name != "mnist5k":  # the fixture benchmarks' small backbone (mnist5k's spec has its own)
        settings += FIXTURE_CLASSIFIER
    if name == "imagenet100":  # its spec at 64 px and one epoch, to keep the run short (start epochs are
        settings.append("classifier.epochs=1")  # fractions of the epochs, so one epoch refuses nothing)
        benchmark = str(small_spec(tmp_path, name, image_size=64))
    args = ["run", "--methods", ",".join(methods), "--benchmark", benchmark, "--preset", "quick",
            "--allow-incomplete", "--data-root", str(data_root), "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--smoke"]
    assert main([*args, *[a for s in settings for a in ("--set", s)]]) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "out/records" / name).rglob("seed0.json")]
    assert sorted(r["method"] for r in records) == methods
    for record in records:
        assert record["data"]["preset"] == "quick"
        assert all(0.0 <= m["auroc"] <= 1.0 for m in record["metrics"].values())
