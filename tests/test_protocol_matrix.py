"""Every registered method runs with its own defaults on every paper benchmark: planning (configs, start epochs,
checks against the recipe) for `paper` and `quick`, and a full `quick` run on fixture data written by the test (kept
tiny through --set: the point is that nothing is refused, not the numbers). New plugins join automatically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.registry import discover
from harness.runner import RunRequest, plan
from tests.test_real_data import small_spec, write_cifar_benchmark, write_imagenet, write_images

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("mnist5k", "cifar100", "imagenet100")
# Settings that only shrink the work of a quick run on fixture data (a few images per class); methods not listed
# run with their defaults.
TINY = {
    "classifier": {"backbone": "resnet_small"},
    "knn": {"k": "5"},
    "npos": {"test_k": "5"},
    "dream_ood": {"model": str(REPO / "models/tiny-sd-mnist5k"), "latent_epochs": "1", "features_per_class": "2",
                  "k": "2", "boundary_count": "2", "candidates_per_point": "4", "kept_per_point": "1", "rounds": "1",
                  "outliers_per_class": "1", "steps": "2", "generation_size": "none", "output_size": "none",
                  "generation_batch_size": "100"},
    "flow": {"epochs": "1", "blocks": "2", "hidden": "4", "lipschitz_samples": "2"},
    "ncis": {"model": str(REPO / "models/tiny-sd-mnist5k"), "max_per_class": "2", "timesteps_per_image": "2",
             "embedding_iterations": "1", "cvpn_epochs": "1", "rounds": "1", "candidates_per_round": "8",
             "kept_per_round": "1", "outliers_per_class": "1", "steps": "2", "generation_size": "none",
             "output_size": "none", "generation_batch_size": "100", "epochs": "none", "covariance": "shrinkage"},
}


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
    settings = [f"{scope}.{k}={v}" for scope, values in TINY.items() if scope in methods or scope == "classifier"
                for k, v in values.items()]
    benchmark = name
    if name == "imagenet100":  # one epoch (start epochs are fractions, so this refuses nothing) at 64 px: its spec
        settings.append("classifier.epochs=1")  # with only the image size changed (224 px took 6 min of CPU)
        benchmark = str(small_spec(tmp_path, name, image_size=64))
    if name == "mnist5k":  # its own small backbone and the shipped tiny SD model
        settings = [s for s in settings if not s.startswith(("classifier.", "dream_ood."))]
        settings += ["dream_ood.latent_epochs=1", "dream_ood.outliers_per_class=2", "dream_ood.steps=2",
                     "dream_ood.rounds=1", "flow.epochs=1", "flow.blocks=2", "flow.hidden=4",
                     "ncis.max_per_class=2", "ncis.timesteps_per_image=2", "ncis.cvpn_epochs=1", "ncis.rounds=1",
                     "ncis.kept_per_round=1", "ncis.outliers_per_class=1", "ncis.steps=2",
                     "ncis.covariance=shrinkage", "ncis.candidates_per_round=500"]
    args = ["run", "--methods", ",".join(methods), "--benchmark", benchmark, "--preset", "quick",
            "--allow-incomplete", "--data-root", str(data_root), "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main([*args, *[a for s in settings for a in ("--set", s)]]) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "out/records" / name).rglob("seed0.json")]
    assert sorted(r["method"] for r in records) == methods
    for record in records:
        assert record["data"]["preset"] == "quick"
        assert all(0.0 <= m["auroc"] <= 1.0 for m in record["metrics"].values())
