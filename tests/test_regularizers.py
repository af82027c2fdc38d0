"""The shared energy regulariser: loss value, b labels, gradient flow, one forward pass for image outliers."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.classifier.hooks import StepBatch
from harness.classifier.models import build_classifier
from harness.classifier.training import ClassifierConfig, train_classifier
from harness.components.regularizers import EnergyRegularizer, WeightedLogSumExp
from harness.data.sets import ImageSet
from harness.errors import HarnessError


def tiny_classifier(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return build_classifier("resnet_small", 1, num_classes, [0.5], [0.25])


def identity_phi(reg: EnergyRegularizer) -> None:
    """phi(E) = [0, E]: the "ID" logit grows with the energy."""
    with torch.no_grad():
        reg.phi.weight.copy_(torch.tensor([[0.0], [1.0]]))
        reg.phi.bias.zero_()


def test_binary_loss_matches_formula_and_labels_id_as_one():
    reg = EnergyRegularizer(3, beta=1.0, outlier_features=lambda b, m: None)
    identity_phi(reg)
    id_logits = torch.full((4, 3), 10.0)        # energy ~ 11.1: confidently ID under phi(E) = [0, E]
    outlier_logits = torch.full((5, 3), -10.0)  # energy ~ -8.9: confidently outlier
    loss = reg.binary_loss(id_logits, outlier_logits)
    energies = torch.logsumexp(torch.cat([id_logits, outlier_logits]), 1)
    expected = F.cross_entropy(torch.stack([torch.zeros(9), energies], 1), torch.tensor([1] * 4 + [0] * 5))
    assert torch.allclose(loss, expected)
    assert loss < 1e-3  # with b swapped (ID = 0) this loss would be ~10
    swapped = reg.binary_loss(outlier_logits, id_logits)
    assert swapped > 5.0


def test_gradient_reaches_phi_backbone_and_head_through_feature_outliers():
    model = tiny_classifier()
    reg = EnergyRegularizer(3, beta=0.5, phi="mlp", weighted_energy=True,
                            outlier_features=lambda b, m: torch.randn(6, m.feature_dim) + b.features.mean(0))
    x = torch.rand(8, 1, 32, 32)
    feats = model.features(x)
    batch = StepBatch(0, 0, x, torch.randint(0, 3, (8,)), feats, model.fc(feats))
    loss, terms = reg.loss(batch, model)
    assert "energy_reg" in terms and torch.allclose(loss, 0.5 * terms["energy_reg"])
    loss.backward()
    for name, params in [("phi", reg.phi.parameters()), ("weighted energy", reg.weighted.parameters()),
                         ("backbone", model.backbone.parameters()), ("head", model.fc.parameters())]:
        grads = [p.grad for p in params]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_inactive_before_start_epoch_and_when_source_is_empty():
    model = tiny_classifier()
    calls = []
    reg = EnergyRegularizer(3, beta=1.0, start_epoch=2, outlier_features=lambda b, m: calls.append(b.epoch))
    x = torch.rand(4, 1, 32, 32)
    feats = model.features(x)
    for epoch in (0, 1, 2):
        loss, terms = reg.loss(StepBatch(epoch, 0, x, torch.zeros(4, dtype=torch.long), feats, model.fc(feats)), model)
        assert loss is None and terms == {}
    assert calls == [2]  # the source is not even asked before the start epoch


def test_weighted_logsumexp_equals_logsumexp_with_unit_weights():
    module = WeightedLogSumExp(4)
    with torch.no_grad():
        module.weight.fill_(1.0)
    logits = torch.randn(7, 4) * 30
    assert torch.allclose(module(logits), torch.logsumexp(logits, 1), atol=1e-5)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[2.0, 0.0, -1.0, 0.5]]))  # relu drops the negative weight
    small = logits / 30
    expected = torch.log(2 * small[:, 0].exp() + 0.5 * small[:, 3].exp())
    assert torch.allclose(module(small), expected, atol=1e-5)


def test_image_outliers_share_one_forward_pass_and_train():
    gen = torch.Generator().manual_seed(0)
    train = ImageSet("toy", (torch.rand(48, 1, 8, 8, generator=gen) * 255).to(torch.uint8),
                     torch.arange(48) % 3)
    seen = []

    class Spy(EnergyRegularizer):
        def loss(self, batch, model):
            seen.append((len(batch.logits), None if batch.extra_logits is None else len(batch.extra_logits)))
            return super().loss(batch, model)

    reg = Spy(3, beta=1.0, start_epoch=1, outlier_images=lambda b: torch.rand(5, 1, 8, 8))
    identity_phi(reg)
    before = reg.phi.weight.detach().clone()
    config = ClassifierConfig(backbone="resnet_small", epochs=2, batch_size=16, lr=0.01)
    train_classifier(tiny_classifier(), train, config, torch.device("cpu"), 0, [reg])
    assert seen[:3] == [(16, None)] * 3       # epoch 0: no outliers appended
    assert seen[3:] == [(16, 5)] * 3          # epoch 1: 5 outlier images in the same forward pass
    assert not torch.equal(before, reg.phi.weight)


def test_score_choices():
    reg = EnergyRegularizer(3, beta=1.0, test_score="phi", outlier_features=lambda b, m: None)
    identity_phi(reg)
    logits = torch.randn(6, 3)
    assert torch.allclose(reg.score(logits), torch.logsumexp(logits, 1))  # phi = [0, E]: log-odds equal E
    with torch.no_grad():
        reg.phi.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    assert torch.allclose(reg.score(logits), -2 * torch.logsumexp(logits, 1))
    reg.test_score = "energy"  # float64, exactly the energy method's score (components.scores.energy_score)
    from harness.components.scores import energy_score
    assert torch.equal(reg.score(logits), torch.from_numpy(energy_score(logits.numpy())))
    assert torch.allclose(reg.score(logits), torch.logsumexp(logits.double(), 1))


@pytest.mark.parametrize("kwargs, message", [
    ({"beta": -0.1}, "negative"),
    ({"beta": 1.0, "start_epoch": -1}, "start epoch"),
    ({"beta": 1.0, "outlier_features": None}, "exactly one outlier source"),
])
def test_bad_arguments(kwargs, message):
    kwargs = {"outlier_features": lambda b, m: None, **kwargs}
    with pytest.raises(HarnessError, match=message):
        EnergyRegularizer(3, **kwargs)


def test_non_finite_loss_stops_with_terms_and_keeps_last_good_state(tmp_path):
    gen = torch.Generator().manual_seed(0)
    train = ImageSet("toy", (torch.rand(32, 1, 8, 8, generator=gen) * 255).to(torch.uint8), torch.arange(32) % 3)
    reg = EnergyRegularizer(3, beta=1.0, outlier_features=lambda b, m: torch.full((2, m.feature_dim), float("nan"))
                            if b.epoch == 1 else None)
    checkpoint = tmp_path / "failed.pt"
    config = ClassifierConfig(backbone="resnet_small", epochs=3, batch_size=16, lr=0.01)
    model = tiny_classifier()
    expected = r"non-finite loss at epoch 1 step 2 \(ce=.*energy_reg=nan\).*end of epoch 0"
    with pytest.raises(HarnessError, match=expected):
        train_classifier(model, train, config, torch.device("cpu"), 0, [reg], failure_checkpoint=checkpoint)
    saved = torch.load(checkpoint)
    assert saved["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    restored = tiny_classifier()
    restored.load_state_dict(saved["state_dict"])
    assert len(saved["hooks"]) == 1 and set(saved["hooks"][0][0]) == {"weight", "bias"}


def test_phi_kinds_have_the_stated_linear_layers():
    from harness.components.regularizers import build_phi

    layers = {kind: [m for m in build_phi(kind).modules() if isinstance(m, torch.nn.Linear)]
              for kind in ("linear", "mlp", "mlp3")}
    assert [(m.in_features, m.out_features) for m in layers["linear"]] == [(1, 2)]
    assert [(m.in_features, m.out_features) for m in layers["mlp"]] == [(1, 512), (512, 2)]
    assert [(m.in_features, m.out_features) for m in layers["mlp3"]] == [(1, 512), (512, 512), (512, 2)]
    assert build_phi("mlp3")(torch.randn(5, 1)).shape == (5, 2)


def test_modules_come_from_their_own_seeded_generator_not_the_global_stream():
    """phi and the energy weights are drawn from the run seed alone; building them leaves torch's global generator
    (the classifier's initialisation) where it was."""
    torch.manual_seed(7)
    before = torch.get_rng_state()
    reg = EnergyRegularizer(4, beta=1.0, phi="mlp3", weighted_energy=True, outlier_features=lambda b, m: None, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)  # a different global state gives the same modules
    same = EnergyRegularizer(4, beta=1.0, phi="mlp3", weighted_energy=True, outlier_features=lambda b, m: None, seed=3)
    other = EnergyRegularizer(4, beta=1.0, phi="mlp3", weighted_energy=True, outlier_features=lambda b, m: None, seed=4)
    for a, b, c in zip(reg.phi.parameters(), same.phi.parameters(), other.phi.parameters(), strict=True):
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(reg.weighted.weight, same.weighted.weight)


def test_beta_zero_adds_no_loss_but_records_the_term():
    model = tiny_classifier()
    reg = EnergyRegularizer(3, beta=0.0, outlier_features=lambda b, m: torch.randn(6, m.feature_dim))
    x = torch.rand(8, 1, 32, 32)
    feats = model.features(x)
    loss, terms = reg.loss(StepBatch(0, 0, x, torch.randint(0, 3, (8,)), feats, model.fc(feats)), model)
    assert loss is None and torch.isfinite(terms["energy_reg"]) and not terms["energy_reg"].requires_grad
    reg.on_epoch_end(0)
    assert reg.history[0]["steps"] == 1 and reg.history[0]["loss"] == pytest.approx(float(terms["energy_reg"]))


def test_per_epoch_record_of_term_and_head_accuracy():
    gen = torch.Generator().manual_seed(0)
    train = ImageSet("toy", (torch.rand(48, 1, 8, 8, generator=gen) * 255).to(torch.uint8), torch.arange(48) % 3)
    seen = []

    class Spy(EnergyRegularizer):
        def _binary(self, id_logits, outlier_logits):
            term, accuracy = super()._binary(id_logits, outlier_logits)
            seen.append((epoch_of[0], float(term.detach()), float(accuracy)))
            return term, accuracy

        def on_epoch_end(self, epoch):
            super().on_epoch_end(epoch)
            epoch_of[0] = epoch + 1

    epoch_of = [0]
    reg = Spy(3, beta=1.0, start_epoch=1, outlier_images=lambda b: torch.rand(5, 1, 8, 8))
    config = ClassifierConfig(backbone="resnet_small", epochs=3, batch_size=16, lr=0.01)
    train_classifier(tiny_classifier(), train, config, torch.device("cpu"), 0, [reg])
    record = reg.record()
    assert record["epoch"] == [0, 1, 2] and record["steps"] == [0, 3, 3]
    assert record["loss"][0] is None and record["head_accuracy"][0] is None  # before start_epoch
    for epoch in (1, 2):
        terms = [t for e, t, _ in seen if e == epoch]
        accuracies = [a for e, _, a in seen if e == epoch]
        assert record["loss"][epoch] == pytest.approx(sum(terms) / 3, abs=1e-6)
        assert record["head_accuracy"][epoch] == pytest.approx(sum(accuracies) / 3, abs=1e-6)
        assert 0.0 <= record["head_accuracy"][epoch] <= 1.0
    restored = EnergyRegularizer(3, beta=1.0, start_epoch=1, outlier_images=lambda b: None)
    restored.load_state_dict(reg.state_dict())  # an epoch checkpoint carries the record
    assert restored.record() == record


def _fit_phi(reg: EnergyRegularizer, id_logits: torch.Tensor, outlier_logits: torch.Tensor, steps: int = 300):
    optimiser = torch.optim.Adam(reg.phi.parameters(), lr=0.05)
    for _ in range(steps):
        optimiser.zero_grad()
        reg.binary_loss(id_logits, outlier_logits).backward()
        optimiser.step()
    with torch.no_grad():
        return reg._binary(id_logits, outlier_logits)[1]


# mlp3 (the same property on the largest head, minutes on 2 cores) runs with publish's -m slow checks
@pytest.mark.parametrize("kind", ["linear", "mlp", pytest.param("mlp3", marks=[pytest.mark.slow, pytest.mark.heavy])])
def test_anchored_phi_is_monotone_and_cannot_learn_the_inverted_orientation(kind):
    torch.manual_seed(0)
    id_logits = torch.randn(64, 3) - 6.0        # ID logsumexp around -5
    outlier_logits = torch.randn(64, 3) + 6.0   # outliers around +7: only the inverted orientation separates them
    free = EnergyRegularizer(3, beta=1.0, phi=kind, outlier_features=lambda b, m: None)
    anchored = EnergyRegularizer(3, beta=1.0, phi=kind, outlier_features=lambda b, m: None, orientation="anchored")
    assert _fit_phi(free, id_logits, outlier_logits) == 1.0
    assert _fit_phi(anchored, id_logits, outlier_logits) <= 0.55  # no better than the prior
    intended = EnergyRegularizer(3, beta=1.0, phi=kind, outlier_features=lambda b, m: None, orientation="anchored")
    assert _fit_phi(intended, outlier_logits, id_logits) == 1.0   # the intended orientation it learns
    grid = torch.linspace(-40, 40, 801)[:, None]
    with torch.no_grad():
        out = anchored.phi(grid)
    log_odds = out[:, 1] - out[:, 0]
    assert (log_odds[1:] - log_odds[:-1] >= -1e-5).all()


def test_unknown_orientation_is_one_line_error():
    with pytest.raises(HarnessError, match="unknown phi orientation 'up'; choose free"):
        EnergyRegularizer(3, beta=1.0, outlier_features=lambda b, m: None, orientation="up")
