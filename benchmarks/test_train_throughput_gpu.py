"""ResNet-34 (CIFAR) training throughput on a GPU, random data, batch 160: the trainer with bf16 autocast
(`precision=bf16`, the CUDA default) vs fp32 (`precision=fp32`); both keep data as uint8 on the device and run
channels_last. Skipped without CUDA.

Run: python -m pytest benchmarks/test_train_throughput_gpu.py -q --benchmark-only   (images/s in extra_info;
projected 250-epoch wall time = 250 * 50,000 / images_per_s)
"""

import pytest
import torch

from harness.classifier.models import build_classifier
from harness.classifier.training import ClassifierConfig, train_classifier
from harness.data.sets import ImageSet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
STEPS, BATCH = 40, 160


def run(precision: str) -> None:
    device = torch.device("cuda")
    data = ImageSet("random", torch.randint(0, 256, (STEPS * BATCH, 3, 32, 32), dtype=torch.uint8),
                    torch.randint(0, 100, (STEPS * BATCH,)))
    model = build_classifier("resnet34_cifar", 3, 100, [0.5] * 3, [0.25] * 3)
    config = ClassifierConfig(epochs=1, batch_size=BATCH, precision=precision)
    train_classifier(model, data, config, device, seed=0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_resnet34_cifar_training_throughput(benchmark, precision):
    torch.backends.cudnn.benchmark = True
    run(precision)  # warm-up (cudnn autotuning, allocator)
    benchmark.pedantic(run, args=(precision,), rounds=3, iterations=1)
    images_per_s = STEPS * BATCH / benchmark.stats.stats.mean
    benchmark.extra_info["images_per_s"] = round(images_per_s)
    benchmark.extra_info["projected_250_epochs_h"] = round(250 * 50_000 / images_per_s / 3600, 2)
