"""Every built-in cached stage is keyed by a version constant (harness.cache), and the constants stay honest: the
lock file `tests/stage_versions.json` stores, per stage, its version and a hash of the sources that compute it. When
those sources change and the constant does not, this test fails until a person decides: bump the constant if the
change alters what the stage computes (old cache entries are then never reused), and in either case record the new
sources with

    python tests/test_stage_versions.py

Third-party plugins need no constant: their stages are keyed by their distribution, version and source hash."""

import hashlib
import importlib
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = Path(__file__).with_name("stage_versions.json")

# stage group -> (its version constant, the cache stage names it keys, the sources that compute them)
STAGES = {
    "benchmark-data": ("harness.data.benchmarks:DATA_VERSION", ["benchmark-data"],
                       ["harness/data/benchmarks.py", "harness/data/embedded.py", "harness/data/sets.py",
                        "harness/data/readers.py", "harness/data/sources.py"]),
    "set-fingerprint": ("harness.data.fingerprints:FINGERPRINT_VERSION", ["set-fingerprint"],
                        ["harness/data/fingerprints.py"]),
    "classifier": ("harness.classifier.training:CLASSIFIER_VERSION", ["classifier", "outputs"],
                   ["harness/classifier/training.py", "harness/classifier/models.py", "harness/classifier/augment.py",
                    "harness/classifier/hooks.py"]),
    "regularizer": ("harness.components.regularizers:REGULARIZER_VERSION", [],
                    ["harness/components/regularizers.py", "harness/components/outlier_images.py",
                     "harness/components/feature_queues.py", "harness/components/scores.py"]),
    "text-embeddings": ("methods.text_flow.stages:EMBEDDING_VERSION", ["text-embeddings"],
                        ["methods/text_flow/stages.py", "methods/text_flow/encoders.py"]),
    "text-outliers": ("methods.text_flow.stages:OUTLIER_VERSION", ["text-outliers"],
                      ["methods/text_flow/stages.py", "methods/text_flow/outliers.py"]),
    "dream-ood-latent": ("harness.components.text_latent:LATENT_VERSION", ["dream-ood-latent"],
                         ["harness/components/text_latent.py"]),
    "ncis-embeddings": ("harness.diffusion.embeddings:DIFFUSION_EMBEDDING_VERSION", ["ncis-embeddings"],
                        ["harness/diffusion/embeddings.py", "harness/diffusion/backend.py"]),
    "generation": ("harness.diffusion.stage:GENERATION_VERSION", ["generation"],
                   ["harness/diffusion/stage.py", "harness/diffusion/backend.py"]),
    "ncis-cvpn": ("methods.ncis.cvpn:CVPN_VERSION", ["ncis-cvpn"], ["methods/ncis/cvpn.py"]),
    "flow": ("methods.flow:FLOW_VERSION", ["flow", "flow-loglik", "complexity"],
             ["methods/flow/__init__.py", "harness/components/flows.py", "methods/flow/outlier_synthesis.py"]),
    "text-flow": ("methods.text_flow:TEXT_FLOW_VERSION", ["text-flow"],
                  ["methods/text_flow/__init__.py", "harness/components/flows.py", "methods/text_flow/complexity.py"]),
}


def constant(reference: str) -> int:
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def sources_sha256(root: Path, files: list[str]) -> str:
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return digest.hexdigest()


def current(root: Path = ROOT) -> dict[str, dict]:
    return {stage: {"version": constant(ref), "sources_sha256": sources_sha256(root, files)}
            for stage, (ref, _, files) in STAGES.items()}


def stale(lock: dict[str, dict], now: dict[str, dict]) -> list[str]:
    """One line per stage whose sources changed while its version constant did not, or whose lock is out of date."""
    problems = []
    for stage, state in now.items():
        locked = lock.get(stage)
        ref, _, files = STAGES[stage]
        if locked is None:
            problems.append(f"{stage}: not in {LOCK.name}; record it with python tests/test_stage_versions.py")
        elif locked["sources_sha256"] != state["sources_sha256"] and locked["version"] == state["version"]:
            problems.append(f"{stage}: {', '.join(files)} changed but {ref} is still {state['version']}: bump it if "
                            "the change alters what the stage computes, then record the sources with python "
                            "tests/test_stage_versions.py")
        elif locked != state:
            problems.append(f"{stage}: {ref} is {state['version']} but {LOCK.name} holds {locked['version']}; "
                            "record it with python tests/test_stage_versions.py")
    return problems


def test_every_built_in_stage_matches_its_locked_version_and_sources():
    assert not stale(json.loads(LOCK.read_text()), current()), "\n".join(stale(json.loads(LOCK.read_text()),
                                                                              current()))


def test_a_source_change_without_a_version_bump_fails(tmp_path):
    ref, _, files = STAGES["classifier"]
    for name in {f for _, _, fs in STAGES.values() for f in fs}:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    lock = current(tmp_path)
    assert stale(lock, current(tmp_path)) == []
    with (tmp_path / files[0]).open("a") as handle:
        handle.write("\n# a change\n")
    problems = stale(lock, current(tmp_path))
    assert len(problems) == 1 and problems[0].startswith("classifier: ") and ref in problems[0]
    bumped = {**lock, "classifier": {**lock["classifier"], "version": lock["classifier"]["version"] - 1}}
    assert "bump it" not in stale(bumped, current(tmp_path))[0]  # a bumped constant asks only for the record


def test_every_cached_stage_of_the_code_has_a_version_constant():
    named = {name for _, names, _ in STAGES.values() for name in names}
    used = set()
    for path in [*ROOT.glob("harness/**/*.py"), *ROOT.glob("methods/**/*.py")]:
        text = path.read_text()
        used |= set(re.findall(r'get_or_compute\(\s*"([\w-]+)"', text))
        used |= set(re.findall(r'ShardedStage\(\s*\w+,\s*"([\w-]+)"', text))
        used |= set(re.findall(r'cache\.path\(\s*"([\w-]+)"', text)) - {"checkpoints"}
    from harness.diffusion.embeddings import STAGE

    used.add(STAGE)
    assert used <= named, f"cached stages without a version constant in STAGES: {sorted(used - named)}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_version_constant_is_an_integer(stage):
    assert isinstance(constant(STAGES[stage][0]), int)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    LOCK.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {LOCK}")
