"""The contract's score convention, higher = more in-distribution, for every registered method: each method's own
scoring code on a constructed case whose answer is known (ID = the training data, OOD = points far from it with no
class evidence). A registered method without a case here fails `test_every_registered_method_has_a_case`."""

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from harness.cache import Cache
from harness.components.flows import Flow, FlowSpec, FlowTrainConfig, scale_pixels, train_flow
from harness.components.regularizers import EnergyRegularizer
from harness.components.scores import KNNScorer
from harness.context import ClassifierOutputs
from harness.data.sets import ImageSet
from harness.metrics import auroc
from harness.registry import discover, method_config

RNG = np.random.default_rng(0)
CLASSES, DIM = 3, 16
CENTRES = np.zeros((CLASSES, DIM))
CENTRES[np.arange(CLASSES), np.arange(CLASSES)] = 4.0  # classes live on the first three axes
WEIGHT, BIAS = CENTRES / 2, np.zeros(CLASSES)


def _features(n, far=False):
    """ID: around the class centres (ReLU-like, non-negative). Far: as large, but on the axes no class uses, so
    the head sees no evidence for any class (logits = bias)."""
    if far:
        out = np.zeros((n, DIM))
        out[:, CLASSES:] = np.abs(RNG.normal(0, 1, (n, DIM - CLASSES))) * 2.0
        return out
    labels = RNG.integers(0, CLASSES, n)
    return np.abs(CENTRES[labels] + RNG.normal(0, 0.3, (n, DIM)))


def _outputs(features):
    return ClassifierOutputs(features.astype(np.float32), (features @ WEIGHT.T + BIAS).astype(np.float32))


TRAIN, TEST, FAR = _outputs(_features(300)), _outputs(_features(200)), _outputs(_features(200, far=True))


def _classifier():
    fc = nn.Linear(DIM, CLASSES)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(WEIGHT))
        fc.bias.copy_(torch.from_numpy(BIAS))
    return SimpleNamespace(model=SimpleNamespace(fc=fc))


def _context():
    """Stands in for RunContext: 'images' are the constructed output dicts themselves."""
    classifier = _classifier()
    return SimpleNamespace(baseline_classifier=lambda: classifier, outputs=lambda _, images: images,
                           benchmark=SimpleNamespace(train=TRAIN))


def post_hoc(cls):
    method = cls(method_config(cls, "mnist5k", {}), _context())
    method.train(None)
    return method.score(TEST), method.score(FAR)


def feature_knn(cls):
    """NPOS scores -(k-th neighbour distance) of normalised features through its trained classifier."""
    config = method_config(cls, "mnist5k", {})
    method = cls(config, _context())
    method.classifier = _classifier()
    method.scorer = KNNScorer(config.test_k if config.test_k < len(TRAIN.features) else 50).fit(TRAIN.features)
    return method.score(TEST), method.score(FAR)


def energy_regularized(cls):
    """VOS, Dream-OOD, NCIS: the regulariser's test score (energy, or phi after its binary training on ID vs
    flat-logit outliers) of the classifier's logits."""
    config = method_config(cls, "mnist5k", {})
    method = cls(config, _context())
    method.classifier = _classifier()
    torch.manual_seed(0)
    method.regularizer = EnergyRegularizer(CLASSES, 1.0, config.phi, test_score=config.test_score,
                                           outlier_features=lambda batch, model: None)
    outliers = torch.from_numpy(_outputs(_features(300, far=True)).logits)
    optimizer = torch.optim.Adam(method.regularizer.modules()[0].parameters(), lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        method.regularizer.binary_loss(torch.from_numpy(TRAIN.logits), outliers).backward()
        optimizer.step()
    return method.score(TEST), method.score(FAR)


def density(cls, tmp_path):
    """The flow: trained on smooth 4x4 two-channel images; uniform noise images lie far from them."""
    base = np.linspace(60, 190, 16).reshape(1, 4, 4)
    id_images = torch.from_numpy(np.clip(np.stack([np.concatenate([base, base[:, ::-1]]) + RNG.normal(0, 3, (2, 4, 4))
                                                   for _ in range(400)]), 0, 255).astype(np.uint8))
    far = torch.from_numpy(RNG.integers(0, 256, (200, 2, 4, 4)).astype(np.uint8))
    torch.manual_seed(0)
    flow = Flow(FlowSpec((2, 4, 4), blocks=2, hidden=16, haar=False))
    generator = torch.Generator().manual_seed(0)

    def batches(_):
        yield scale_pixels(id_images[:300], generator), None

    train_flow(flow, batches, FlowTrainConfig(epochs=60, lr=3e-3), desc="direction")
    method = cls(method_config(cls, "mnist5k", {}), SimpleNamespace(cache=Cache(tmp_path)))
    method.flow, method.key = flow.eval(), "direction-test"
    return method.score(ImageSet("id", id_images[300:])), method.score(ImageSet("far", far))


def text_density(cls):
    """The text flow: log p of scaled sentence embeddings; ID texts embed around one point, far texts elsewhere."""
    from harness.data.text import TextSet

    dim = 8
    id_vectors = RNG.normal(0, 0.3, (500, dim)) + 1.0
    far_vectors = RNG.normal(0, 0.3, (200, dim)) - 3.0
    vectors = {f"id {i}": v for i, v in enumerate(id_vectors)} | {f"far {i}": v for i, v in enumerate(far_vectors)}
    encoder = SimpleNamespace(encode=lambda texts: np.stack([vectors[x] for x in texts.texts]))
    method = cls(method_config(cls, "movie_reviews", {}), SimpleNamespace())
    method._stage = lambda: encoder
    method._fit_scaling(id_vectors[:300])
    torch.manual_seed(0)
    method.flow = Flow(FlowSpec((dim,), blocks=2, hidden=16))
    generator = torch.Generator().manual_seed(0)
    x = method.scaled(id_vectors[:300])

    def batches(_):
        yield x[torch.randperm(len(x), generator=generator)], None

    train_flow(method.flow, batches, FlowTrainConfig(epochs=100, lr=3e-3), desc="direction")
    method.flow.eval()
    method._log_p = {}
    texts = lambda prefix, n, start: TextSet(prefix, tuple(f"{prefix} {i}" for i in range(start, start + n)),  # noqa: E731
                                              (0,) * n)
    return method.score(texts("id", 200, 300)), method.score(texts("far", 200, 0))


CASES = {"msp": post_hoc, "energy": post_hoc, "knn": post_hoc, "vim": post_hoc, "react": post_hoc,
         "npos": feature_knn, "vos": energy_regularized, "dream_ood": energy_regularized,
         "ncis": energy_regularized, "flow": density, "text_flow": text_density}


def test_every_registered_method_has_a_case():
    missing = sorted(set(discover()) - set(CASES))
    assert not missing, f"add a score-direction case for {missing} in tests/test_score_direction.py"


def test_every_method_scores_its_training_distribution_higher(tmp_path):
    registry = discover()
    for name, case in CASES.items():
        cls = registry[name].cls
        id_scores, far_scores = case(cls, tmp_path / name) if case is density else case(cls)
        value = auroc(np.asarray(id_scores, dtype=np.float64), np.asarray(far_scores, dtype=np.float64))
        assert value > 0.95, f"{name}: AUROC {value:.3f} of ID vs far points; higher must mean more ID"
