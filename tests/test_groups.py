"""Near- and far-OOD groups: every spec's OOD sets carry one, records carry each group's average beside the overall
one, and the committed records (which predate the field) get the same averages from their per-set metrics."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from harness.cache import Cache
from harness.data.spec import available_benchmarks, load_spec
from harness.errors import HarnessError
from harness.metrics import METRIC_NAMES
from harness.paths import DATASETS_DIR, RESULTS_DIR
from harness.plan import RunRequest, plan
from harness.records.leaderboard import benchmark_spec
from harness.records.results import RunRecord, load_records
from harness.records.statistics import group_averages, record_group_averages, set_groups
from harness.runner import execute

MNIST5K_GROUPS = {"glyphs": "near", "textures": "far", "photos": "far", "faces": "far", "noise": "far"}


def test_group_averages_are_the_means_of_each_groups_sets_and_an_ungrouped_set_is_in_none():
    rng = np.random.default_rng(0)
    per_set = {name: {m: float(rng.uniform()) for m in METRIC_NAMES} for name in [*MNIST5K_GROUPS, "mine"]}
    averages = group_averages(per_set, MNIST5K_GROUPS)
    assert set(averages) == {"near", "far"}
    for metric in METRIC_NAMES:
        assert averages["near"][metric] == per_set["glyphs"][metric]
        assert averages["far"][metric] == pytest.approx(np.mean([per_set[s][metric] for s in
                                                                 ("textures", "photos", "faces", "noise")]), abs=1e-15)
    assert group_averages(per_set, {"noise": "far"}) == {"far": per_set["noise"]}
    assert group_averages(per_set, {}) == {}


def test_committed_records_get_their_group_averages_from_the_spec():
    for benchmark, near in (("mnist5k", ["glyphs"]), ("mnist5k-openood", ["glyphs"]),
                            ("movie_reviews", ["rt_snippets"])):
        records = load_records(RESULTS_DIR, benchmark)
        spec = benchmark_spec(benchmark)
        assert records and spec is not None and all(not r.group_average for r in records)
        for record in records:
            far = [name for name in record.metrics if name not in near]
            averages = record_group_averages(record, spec)
            for metric in record.average:
                assert averages["near"][metric] == pytest.approx(np.mean([record.metrics[s][metric] for s in near]))
                assert averages["far"][metric] == pytest.approx(np.mean([record.metrics[s][metric] for s in far]))


def test_a_recorded_group_wins_over_the_spec_and_covers_an_ood_set_the_spec_lacks():
    spec = load_spec("mnist5k")
    record = RunRecord(benchmark="mnist5k", method="m", label="m", seed=0, paper="", kind="post-hoc", config={},
                       classifier_config=None, fpr_positive="id",
                       metrics={"glyphs": {"auroc": 0.5}, "mine": {"auroc": 0.9}}, average={"auroc": 0.7},
                       id_accuracy=None, eval_sizes={}, stage_seconds={}, device="cpu",
                       data={"sets": {"mine": {"source": "image_folder", "group": "near"}}})
    assert set_groups(record, spec)["mine"] == "near"
    assert record_group_averages(record, spec) == {"near": {"auroc": pytest.approx(0.7)}}
    stored = RunRecord(**{**record.__dict__, "group_average": {"far": {"auroc": 0.1}}})
    assert record_group_averages(stored, spec) == {"far": {"auroc": 0.1}}


def test_every_spec_and_variant_groups_each_ood_set():
    for name in available_benchmarks():
        spec = load_spec(name)
        names = [f"{name}:{variant}" for variant in spec.variants]
        for each in [spec, *map(load_spec, names)]:
            assert set(each.ood_groups) == set(each.ood_names) and set(each.ood_groups.values()) <= {"near", "far"}
    for name in ("mnist5k", "mnist5k:openood", "mnist5k:resnet-bn"):
        assert load_spec(name).ood_groups == MNIST5K_GROUPS
    assert set(load_spec("cifar100").ood_groups.values()) == {"far"}  # OpenOOD v1.5: the papers' sets are far-OOD
    assert set(load_spec("imagenet100").ood_groups.values()) == {"far"}
    assert load_spec("movie_reviews").ood_groups == {"rt_snippets": "near", "lee_news": "far",
                                                     "wiki_paragraphs": "far", "newsgroup_posts": "far"}


def _spec_file(tmp_path, change):
    raw = json.loads((DATASETS_DIR / "mnist5k.json").read_text())
    change(raw)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(raw))
    return path


def test_an_ood_set_without_a_group_is_one_line_naming_it_and_the_fix(tmp_path):
    path = _spec_file(tmp_path, lambda raw: raw["ood"][2].pop("group"))
    with pytest.raises(HarnessError) as err:
        load_spec(str(path))
    message = str(err.value)
    assert "\n" not in message and "ood 'photos' has no group" in message
    assert re.search(r'give it "group": "near" .* or "far"', message)


def test_an_unknown_group_is_one_line(tmp_path):
    path = _spec_file(tmp_path, lambda raw: raw["ood"][0].update(group="close"))
    with pytest.raises(HarnessError) as err:
        load_spec(str(path))
    assert "\n" not in str(err.value) and "ood 'glyphs': group 'close' must be one of near, far" in str(err.value)


def _images(folder, count, level, rng):
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = np.clip(rng.normal(level, 30, (32, 32)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def test_a_run_records_each_groups_average_and_an_ungrouped_ood_set_only_in_the_overall_one(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name, level in (("dark", 40), ("light", 200)):
            _images(tmp_path / "id" / split / name, 8, level, rng)
    _images(tmp_path / "mine", 6, 120, rng)
    spec = {"name": "tiny-groups", "image_size": 32, "channels": 1, "num_classes": 2,
            "class_names": ["dark", "light"], "mean": [0.5], "std": [0.25],
            "id": {"source": "image_folder_splits", "path": str(tmp_path / "id")},
            "ood": [{"name": "noise", "group": "near", "source": "noise", "count": 12, "seed": 5},
                    {"name": "shapes", "group": "far", "source": "shapes", "count": 12, "seed": 6}],
            "classifier": {"backbone": "lenet", "epochs": 1, "batch_size": 16, "lr": 0.05, "hflip": False,
                           "crop_padding": 0}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    request = RunRequest(methods=["msp"], benchmark=str(tmp_path / "spec.json"), out_dir=tmp_path / "out",
                         extra_ood={"mine": str(tmp_path / "mine")})
    (record,) = execute(plan(request), cache=Cache(tmp_path / "cache"))
    assert set(record.metrics) == {"noise", "shapes", "mine"}
    assert record.group_average == {"near": record.metrics["noise"], "far": record.metrics["shapes"]}
    for metric in METRIC_NAMES:
        assert record.average[metric] == pytest.approx(np.mean([m[metric] for m in record.metrics.values()]))
    (saved,) = load_records(tmp_path / "out", "tiny-groups")
    assert saved.group_average == record.group_average


def test_a_baseline_that_is_not_a_label_is_one_line(tmp_path):
    path = _spec_file(tmp_path, lambda raw: raw["baselines"].update(density=""))
    with pytest.raises(HarnessError, match=r"baselines.density '' must be a method label") as err:
        load_spec(str(path))
    assert "\n" not in str(err.value)
