"""The trained-classifier service: a hooked classifier of a third-party plugin is keyed by the plugin's code, and
so are its cached outputs (an edited plugin never reads the outputs of its old classifier); a built-in's keys carry
no scope."""

import torch

from harness.classifier.hooks import TrainingHook
from harness.classifier.training import ClassifierConfig
from harness.context import RunContext
from harness.data.benchmarks import load_benchmark
from harness.data.spec import load_spec
from tests.regress_helpers import TINY_PRESET, write_tiny_spec


def test_a_plugin_s_hooked_classifier_and_its_outputs_are_keyed_by_the_plugin_s_code(tmp_path, session_cache):
    spec = load_spec(str(write_tiny_spec(tmp_path)))
    benchmark = load_benchmark(spec, session_cache, None, spec.preset(TINY_PRESET))
    recipe = ClassifierConfig(**{**spec.classifier, "epochs": 1})

    def context(*plugin_scope):
        return RunContext(benchmark, 0, torch.device("cpu"), session_cache.scoped(*plugin_scope), recipe,
                          shared_cache=session_cache)

    builtin = context().train_classifier("hooked", hooks=[TrainingHook()])
    plugin = context({"source_sha256": "a"}).train_classifier("hooked", hooks=[TrainingHook()])
    edited = context({"source_sha256": "b"}).train_classifier("hooked", hooks=[TrainingHook()])
    assert len({builtin.key, plugin.key, edited.key}) == 3
    assert context({"source_sha256": "a"}).train_classifier("plain").key == context().train_classifier("plain").key
    outputs = context({"source_sha256": "b"}).outputs(edited, benchmark.test)
    assert outputs.logits.shape == (len(benchmark.test), spec.num_classes) and outputs["logits"] is outputs.logits
