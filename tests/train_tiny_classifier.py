"""Subprocess for the crash tests: train the tiny benchmark's baseline classifier (12 epochs) on one thread in the
cache at argv[2] and save its weights to argv[3]. Usage: python tests/train_tiny_classifier.py SPEC CACHE OUT."""

import sys

import torch

from harness.cache import Cache
from harness.classifier.training import ClassifierConfig
from harness.context import RunContext
from harness.data.benchmarks import load_benchmark
from harness.data.spec import load_spec

if __name__ == "__main__":
    torch.set_num_threads(1)
    spec_path, cache_dir, out = sys.argv[1:4]
    cache = Cache(cache_dir)
    benchmark = load_benchmark(spec := load_spec(spec_path), cache, None, spec.preset("tiny"))
    config = ClassifierConfig(backbone="resnet_small", epochs=12, batch_size=128, lr=0.05, hflip=False, crop_padding=2)
    trained = RunContext(benchmark, 0, torch.device("cpu"), cache, config).baseline_classifier()
    torch.save(trained.model.state_dict(), out)
