import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from harness.cache import Cache, read_entry
from harness.classifier.hooks import TrainingHook
from harness.data.sets import ImageSet
from harness.records.results import load_records
from tests.regress_helpers import TINY_PRESET, write_tiny_spec

REPO = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, str(REPO / "tests" / "train_tiny_classifier.py")]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def same_weights(a: Path, b: Path) -> bool:
    left, right = torch.load(a), torch.load(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_training_killed_mid_way_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    spec, cache = write_tiny_spec(tmp_path), tmp_path / "cache"
    start = time.perf_counter()
    subprocess.run([*TRAIN, str(spec), str(cache), str(tmp_path / "whole.pt")], env=env(), check=True,
                   capture_output=True)
    whole_seconds = time.perf_counter() - start
    for entry in (cache / "classifier").glob("*.pt"):
        entry.unlink()  # keep the data stage, train again from scratch
    proc = subprocess.Popen([*TRAIN, str(spec), str(cache), str(tmp_path / "never.pt")], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = cache / "checkpoints"
    while proc.poll() is None:  # kill -9 once the checkpoint of epoch 8 (index 7) is written
        found = list(checkpoints.glob("*.pt")) if checkpoints.is_dir() else []
        if found and read_entry(found[0])["epoch"] >= 7:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL and not list((cache / "classifier").glob("*.pt"))
    start = time.perf_counter()
    resumed = subprocess.run([*TRAIN, str(spec), str(cache), str(tmp_path / "resumed.pt")], env=env(), check=True,
                             capture_output=True, text=True)
    resumed_seconds = time.perf_counter() - start
    notice = [line for line in resumed.stderr.splitlines() if "resuming after epoch" in line]
    assert len(notice) == 1 and int(notice[0].split("resuming after epoch ")[1].split()[0]) >= 8
    assert same_weights(tmp_path / "whole.pt", tmp_path / "resumed.pt")
    assert not list(checkpoints.glob("*.pt"))  # removed once the final weights were stored
    print(f"uninterrupted {whole_seconds:.1f}s, resumed {resumed_seconds:.1f}s")


def test_two_concurrent_runs_on_one_empty_cache_train_once_and_agree(tmp_path):
    spec, cache = write_tiny_spec(tmp_path), tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-m", "harness", "run", "--methods", "msp", "--benchmark", str(spec),
                               "--preset", TINY_PRESET, "--threads", "1", "--cache-dir", str(cache), "--out",
                               str(tmp_path / f"out{i}")], env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum("baseline (seed 0)" in e for e in errors) == 1  # exactly one process trained the classifier
    assert any("waiting for another run computing" in e for e in errors)
    (a,), (b,) = (load_records(tmp_path / f"out{i}", "tiny5k") for i in range(2))
    assert (a.metrics, a.average, a.id_accuracy) == (b.metrics, b.average, b.id_accuracy)


def test_a_lock_left_by_a_killed_process_is_recovered(tmp_path, capsys):
    cache = Cache(tmp_path)
    lock = f"{cache.path('stage', 'key')}.lock"
    cache.path("stage", "key").parent.mkdir(parents=True)
    script = f"from filelock import FileLock; import time; held = FileLock({lock!r}); held.acquire(); " \
             "print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(TimeoutError):
        FileLock(lock).acquire(timeout=0.1)  # really held
    holder.kill()
    holder.wait()
    assert cache.get_or_compute("stage", "key", lambda: 42) == 42 and Path(lock).exists()
    assert "waiting" not in capsys.readouterr().err


def test_a_truncated_cache_entry_is_reported_in_one_line_and_recomputed(tmp_path, capsys):
    cache, calls = Cache(tmp_path), []

    def compute():
        calls.append(1)
        return {"weights": torch.arange(1000.0)}

    cache.get_or_compute("stage", "key", compute)
    path = cache.path("stage", "key")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    value = cache.get_or_compute("stage", "key", compute)
    assert torch.equal(value["weights"], torch.arange(1000.0)) and len(calls) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is damaged or not trusted" in err[0] and "recomputing" in err[0]
    assert cache.get_or_compute("stage", "key", compute) is not None and len(calls) == 2


class NoisyQueueHook(TrainingHook):
    """A hook with the kinds of state VOS/NPOS hooks carry: feature queues (via ClassFeatureQueues), its own
    generator, and a module with trainable weights; its loss depends on all three."""

    def __init__(self, queues):
        self.queues = queues
        self.generator = torch.Generator().manual_seed(1)
        self.head = torch.nn.Linear(128, 1)

    def modules(self):
        return [self.head]

    def loss(self, batch, model):
        if not self.queues.full:
            return None, {}
        pick = torch.randint(0, self.queues.size, (8,), generator=self.generator)
        sample = self.queues.data[:, pick].reshape(-1, self.queues.data.shape[2])
        return self.head(sample).abs().mean(), {}


def test_resuming_restores_hook_state_optimizer_and_rng_to_the_same_weights(tmp_path):
    from harness.classifier.models import build_classifier
    from harness.classifier.training import ClassifierConfig, train_classifier
    from harness.components.feature_queues import ClassFeatureQueues

    images = torch.randint(0, 256, (96, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = ImageSet("toy", images, torch.arange(96) % 4)
    config = ClassifierConfig(backbone="resnet_small", epochs=4, batch_size=32, lr=0.05)

    def train(checkpoint, hooks):
        torch.manual_seed(0)
        model = build_classifier("resnet_small", 1, 4, [0.5], [0.25])
        return train_classifier(model, data, config, torch.device("cpu"), 0, hooks, checkpoint=checkpoint)

    def hooks():
        torch.manual_seed(5)  # the same initial head in both runs
        queues = ClassFeatureQueues(4, 6)
        return [queues, NoisyQueueHook(queues)]

    checkpoint, kept = tmp_path / "ck.pt", tmp_path / "after-epoch-2.pt"

    class KeepEpoch2(TrainingHook):
        def on_epoch_end(self, epoch):
            if epoch == 2:
                kept.write_bytes(checkpoint.read_bytes())  # the state written after epoch index 1

    whole_hooks = hooks()
    whole = train(checkpoint, [*whole_hooks, KeepEpoch2()])
    checkpoint.write_bytes(kept.read_bytes())  # as if killed during epoch index 2
    resumed_hooks = hooks()
    resumed = train(checkpoint, [*resumed_hooks, KeepEpoch2()])
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(whole_hooks[0].data, resumed_hooks[0].data)
    assert torch.equal(whole_hooks[1].head.weight, resumed_hooks[1].head.weight)
    assert torch.equal(whole_hooks[1].generator.get_state(), resumed_hooks[1].generator.get_state())
