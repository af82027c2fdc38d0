"""The speed cost of the portable kernels (harness.numerics, `--kernels avx2`) against each library's native dispatch,
side by side on the same machine, for one classifier training (the mnist5k recipe's LeNet, one epoch over 4,000
images, one thread) and one NCIS embedding stage (16 images through the shipped tiny SD model, 3 Adam steps x 32
timesteps, one thread).

The kernels are chosen before torch loads, so each mode runs in its own worker process, started once per module;
a round is one request to the worker, timed here (the pipe adds well under a millisecond to a stage of seconds).

Run: python -m pytest benchmarks/test_kernels_bench.py --benchmark-only
The ratio of the portable row's mean to the native row's is the cost of the mode on this CPU.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKER = textwrap.dedent('''
    import sys
    from harness.numerics import select_kernels
    select_kernels(sys.argv[1])
    import torch
    torch.set_num_threads(1)

    def classifier_epoch():
        from harness.classifier.models import build_classifier
        from harness.classifier.training import ClassifierConfig, train_classifier
        from harness.data.sets import ImageSet

        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (4000, 1, 32, 32), generator=generator, dtype=torch.uint8)
        train = ImageSet("bench", images, torch.arange(4000) % 10)
        config = ClassifierConfig(backbone="lenet", epochs=1, batch_size=128, lr=0.05, hflip=False, crop_padding=2,
                                  grad_clip=5.0)
        def run():
            torch.manual_seed(0)
            model = build_classifier("lenet", 1, 10, [0.5], [0.5])
            train_classifier(model, train, config, torch.device("cpu"), 0, desc="bench")
        return run

    def ncis_embedding():
        from harness.diffusion.backend import load_backend
        from harness.diffusion.embeddings import EmbeddingConfig, embed_batch

        backend = load_backend("models/tiny-sd-mnist5k")
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (16, 1, 28, 28), generator=generator, dtype=torch.uint8)
        names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        config = EmbeddingConfig(iterations=3, timesteps_per_image=32, images_per_call=8)
        return lambda: embed_batch(backend, images, torch.arange(16) % 10, names, config, list(range(16)))

    stage = {"classifier": classifier_epoch, "embedding": ncis_embedding}[sys.argv[2]]()
    print("ready", torch.backends.cpu.get_cpu_capability(), flush=True)
    for line in sys.stdin:
        stage()
        print("done", flush=True)
''')


class Worker:
    def __init__(self, mode: str, stage: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", WORKER, mode, stage], cwd=REPO,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.capability = self.process.stdout.readline().split()[1]

    def round(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "done"

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.mark.parametrize("stage", ["classifier", "embedding"])
@pytest.mark.parametrize("mode", ["avx2", "native"])
def test_stage_time_under_kernel_mode(benchmark, mode, stage):
    worker = Worker(mode, stage)
    try:
        benchmark.extra_info["aten_capability"] = worker.capability
        benchmark.pedantic(worker.round, rounds=3, warmup_rounds=1)
    finally:
        worker.close()
    if mode == "avx2":
        assert worker.capability == "AVX2"
