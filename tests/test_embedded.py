import numpy as np
import torch

from harness.data.benchmarks import load_benchmark
from harness.data.spec import load_spec


def test_mnist5k_sets_shapes_split_and_determinism(session_cache, tmp_path):
    from harness.cache import Cache

    spec = load_spec("mnist5k")
    bench = load_benchmark(spec, session_cache)
    assert bench.train.images.shape == (4000, 1, 32, 32) and bench.test.images.shape == (1000, 1, 32, 32)
    assert torch.bincount(bench.train.labels).tolist() == [400] * 10
    assert torch.bincount(bench.test.labels).tolist() == [100] * 10
    assert set(bench.ood) == {"glyphs", "textures", "photos", "faces", "noise"}
    for image_set in bench.ood.values():
        assert image_set.images.dtype == torch.uint8 and image_set.images.shape[1:] == (1, 32, 32)
        assert len(image_set) >= 400
        assert image_set.images.float().flatten(1).std(1).min() > 5  # no blank or constant images
    # Train and test do not overlap.
    train = {bytes(x) for x in bench.train.images.numpy()}
    assert not any(bytes(x) in train for x in bench.test.images.numpy())
    # Building from scratch again gives identical pixels.
    again = load_benchmark(spec, Cache(tmp_path))
    assert again.train.fingerprint == bench.train.fingerprint
    assert all(again.ood[n].fingerprint == bench.ood[n].fingerprint for n in bench.ood)


def test_glyph_sources_depend_on_seed():
    from harness.data.sources import get_source

    a = get_source("glyphs")(size=32, channels=1, count=20, seed=1)
    b = get_source("glyphs")(size=32, channels=1, count=20, seed=2)
    assert not np.array_equal(a.images.numpy(), b.images.numpy())
