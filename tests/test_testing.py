import json

import pytest

from harness.cache import Cache
from harness.publish import publish
from harness.testing import assert_within_tolerance
from tests.regress_helpers import TINY_PRESET, write_tiny_spec


def test_plugin_authors_assert_passes_within_tolerance_and_fails_naming_the_metric(tmp_path):
    spec = write_tiny_spec(tmp_path)
    labels = tmp_path / "published.json"
    labels.write_text(json.dumps({"tiny5k": {"seeds": [0], "threads": 1, "preset": TINY_PRESET,
                                             "labels": [{"method": "knn"}]}}))
    publish(str(spec), tmp_path / "results", labels, tmp_path / "cache", slow_checks=False)
    expectations = tmp_path / "results/expectations/tiny5k.json"
    common = dict(benchmark=str(spec), preset=TINY_PRESET, expectations=expectations, out_dir=tmp_path / "runs")
    cache = Cache(tmp_path / "cache")
    (record,) = assert_within_tolerance("knn", cache=cache, tolerance={"*": 0}, **common)  # exact reproduction
    assert record.environment["torch_threads"] == 1
    doc = json.loads(expectations.read_text())
    doc["methods"]["knn(preset=tiny)"]["metrics"]["photos"]["auroc"]["per_seed"]["0"] += 5.0
    expectations.write_text(json.dumps(doc))
    failure = r"1 of \d+ checks beyond tolerance against .*tiny5k.json: knn\(preset=tiny\) seed 0 photos auroc"
    with pytest.raises(AssertionError, match=failure):
        assert_within_tolerance("knn", cache=cache, **common)
