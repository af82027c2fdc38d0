"""The flow paper's flow: invertibility, log-det, dual loss direction, toy command, bad input, end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from harness.cli import main as cli_main
from harness.components.flows import (
    DualLoss,
    Flow,
    FlowSpec,
    FlowTrainConfig,
    bits_per_dim,
    check_finite,
    dual_loss,
    lipschitz_estimate,
    scale_pixels,
    train_flow,
)
from harness.errors import HarnessError
from methods.flow.figure import main as flows_main
from methods.flow.figure import toy_experiment


def _perturb(flow: Flow, std: float) -> None:
    """Move trainable weights off the identity initialisation (the fixed permutation buffers stay as they are)."""
    for p in flow.parameters():
        if p.requires_grad:
            p.data.add_(std * torch.randn_like(p))


def test_image_flow_inverts_in_float32():
    torch.manual_seed(0)
    flow = Flow(FlowSpec((1, 8, 8), blocks=4, hidden=8))
    _perturb(flow, 0.05)
    x = scale_pixels(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8))
    z, _ = flow.forward_with_logdet(x)
    assert (z - x.repeat(1, 4, 1, 1)[:, :, :4, :4]).abs().max() > 1e-2  # not the identity
    assert (flow.inverse(z) - x).abs().max() < 1e-4


def test_log_det_matches_autograd_jacobian():
    torch.manual_seed(1)
    flow = Flow(FlowSpec((1, 4, 4), blocks=3, hidden=8)).double()
    _perturb(flow, 0.1)
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    _, log_jac = flow.forward_with_logdet(x)
    jac = torch.autograd.functional.jacobian(lambda v: flow.forward_with_logdet(v.view(1, 1, 4, 4))[0].flatten(),
                                             x.flatten())
    assert torch.allclose(log_jac[0], torch.linalg.slogdet(jac)[1], atol=1e-6)
    assert abs(log_jac.item()) > 1e-3  # a real test: the transform is not volume preserving


def test_vector_flow_log_prob_is_standard_normal_at_init():
    flow = Flow(FlowSpec((3,), blocks=2, hidden=16, haar=False))  # zero-initialised subnets: identity affine part
    x = torch.randn(5, 3)
    lp = flow.log_prob(x)
    assert lp.shape == (5,) and torch.isfinite(lp).all()


def test_bits_per_dim_margin_at_eight_bits():
    assert bits_per_dim(np.array([0.0]), 1024)[0] == pytest.approx(8.0)


def test_single_channel_without_haar_is_rejected():
    with pytest.raises(ValueError, match="haar"):
        FlowSpec((1, 32, 32), haar=False)


def test_non_finite_loss_names_step_and_terms():
    loss = DualLoss(torch.tensor(float("nan")), torch.tensor(0.3))
    with pytest.raises(HarnessError, match=r"step 7 \(ID NLL nan nats, outlier softplus 0\.3\)"):
        check_finite(loss, 7)


def _blur_vectors(x: torch.Tensor) -> torch.Tensor:
    """A 1-D "Gaussian blur" of vectors: lower complexity, mass pulled towards the mode."""
    return (x.roll(1, 1) + x + x.roll(-1, 1)) / 3


def test_dual_loss_reverses_the_likelihood_bias_on_blurred_vectors():
    """NLL-only: blurred (lower-complexity) samples get higher likelihood than ID (the bias); dual loss: lower."""
    torch.manual_seed(0)
    dims, scale = 6, 0.05  # small scale so ID log p > 0 nats and the softplus margin at log p = 0 separates them
    data = scale * torch.randn(2048, dims)
    held_out = scale * torch.randn(512, dims)
    result = {}
    for dual in (False, True):
        torch.manual_seed(0)
        flow = Flow(FlowSpec((dims,), blocks=4, hidden=64, haar=False))

        def batches(epoch, dual=dual):
            order = torch.randperm(len(data))
            for i in range(0, len(data), 128):
                x = data[order[i:i + 128]]
                yield x, (_blur_vectors(scale * torch.randn(128, dims)) if dual else None)

        train_flow(flow, batches, FlowTrainConfig(epochs=25, lr=1e-3, weight_decay=0.0))
        with torch.no_grad():
            result[dual] = (flow.log_prob(held_out).mean().item(), flow.log_prob(_blur_vectors(held_out)).mean().item())
    id_lp, out_lp = result[False]
    assert out_lp > id_lp
    id_lp, out_lp = result[True]
    assert out_lp < id_lp


def test_dual_loss_terms_and_the_outlier_probability_weighting():
    flow = Flow(FlowSpec((2,), blocks=1, hidden=4, haar=False))
    x, x_out = torch.randn(4, 2), torch.randn(1, 2)  # outlier_prob 0.2: 1 outlier in a batch of 5
    nll, sp = -flow.log_prob(x), torch.nn.functional.softplus(flow.log_prob(x_out))
    per_term = dual_loss(flow, x, x_out, "per-term")
    assert per_term.id_nll.item() == pytest.approx(nll.mean().item(), rel=1e-5)
    assert per_term.outlier_softplus.item() == pytest.approx(sp.mean().item(), rel=1e-5)
    paper = dual_loss(flow, x, x_out)  # default: sums over the whole batch, so the terms weigh 4 : 1
    assert paper.id_nll.item() == pytest.approx(nll.sum().item() / 5, rel=1e-5)
    assert paper.outlier_softplus.item() == pytest.approx(sp.sum().item() / 5, rel=1e-5)
    assert dual_loss(flow, x, None).outlier_softplus is None


def test_haar_only_where_a_one_channel_input_needs_it():
    from types import SimpleNamespace

    from methods.flow import FlowConfig, NormalizingFlow

    def spec(channels, **config):
        from harness.data.sets import ImageSet

        images = ImageSet("t", torch.zeros(2, channels, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
        context = SimpleNamespace(benchmark=SimpleNamespace(train=images))
        return NormalizingFlow(FlowConfig(**config), context)._flow_spec()

    assert spec(3).haar is False and spec(1).haar is True     # paper: the AllInOneBlocks only, for RGB
    assert spec(3, haar=True).haar is True


def test_lipschitz_estimate_reports_max_over_samples():
    flow = Flow(FlowSpec((3,), blocks=1, hidden=4, haar=False))  # identity at init: grad log p = -x
    x = torch.tensor([[1.0, 0, 0], [0, 3.0, 4.0]])
    assert lipschitz_estimate(flow, x)["lipschitz_max"] == pytest.approx(5.0, rel=1e-5)


@pytest.mark.slow
@pytest.mark.heavy  # the figure script's numbers, minutes on 2 cores; the direction is also held by the dual-loss test
def test_toy_command_numbers_move_in_the_papers_direction(tmp_path):
    numbers = toy_experiment(tmp_path, steps=600, seed=0, blocks=4, hidden=64)  # a smaller flow than Appendix A
    for name in ("moons", "circles"):
        assert numbers[name]["dual_ood_minus_id"] < numbers[name]["nll_only_ood_minus_id"]
    assert (tmp_path / "toy_densities.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "toy_numbers.json").read_text()) == numbers


def test_lipschitz_command_rejects_missing_checkpoint(tmp_path, capsys):
    assert flows_main(["lipschitz", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("setting, message", [
    ("flow.alpha=0", "alpha=0.0 must be > 0"),
    ("flow.outlier_prob=1.5", "outlier_prob=1.5 must lie in [0, 1]"),
    ("flow.variant=real", "needs real_set"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, setting, message):
    code = cli_main(["run", "--methods", "flow", "--set", setting, "--out", str(tmp_path / "out"),
                     "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "records").exists()


TINY = ["--set", "flow.epochs=1", "--set", "flow.blocks=2", "--set", "flow.hidden=4",
        "--set", "flow.lipschitz_samples=20"]


@pytest.mark.slow
def test_end_to_end_run_scores_both_ways_with_one_training(tmp_path, capsys):
    args = ["run", "--methods", "flow", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), *TINY]
    assert cli_main(args) == 0
    assert cli_main([*args, "--set", "flow.score=complexity"]) == 0
    flows = list((tmp_path / "cache" / "flow").glob("*.pt"))
    assert len(flows) == 1  # the complexity-scored run reused the trained flow
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records" / "mnist5k").rglob("*.json")]
    assert len(records) == 2
    by_score = {r["config"]["score"]: r for r in records}
    nll, comp = by_score["nll"], by_score["complexity"]
    assert nll["details"]["compressor"] in ("jpeg2000", "png")
    for record in records:  # Fig. 3 (complexity against NLL) beside the score histograms, from the one flow
        assert any(f.endswith("/seed0_complexity.png") for f in record["figures"]), record["figures"]
    figures = sorted((tmp_path / "out" / "records" / "mnist5k").rglob("seed0_complexity.png"))
    assert len(figures) == 2 and figures[0].read_bytes() == figures[1].read_bytes()
    assert Image.open(figures[0]).size[0] > 200
    # each record carries the other score's metrics: they must agree with the other run's own metrics
    for name, metrics in comp["metrics"].items():
        assert nll["details"]["metrics_complexity"][name] == pytest.approx(metrics)
    # ... under the run's FPR convention too (--fpr-positive ood)
    ood_out = tmp_path / "ood"
    ood_args = [*args[:3], "--out", str(ood_out), *args[5:], "--fpr-positive", "ood", "--fpr-rule", "hendrycks"]
    assert cli_main(ood_args) == 0 and cli_main([*ood_args, "--set", "flow.score=complexity"]) == 0
    ood_records = [json.loads(p.read_text()) for p in (ood_out / "records" / "mnist5k").rglob("*.json")]
    ood_by_score = {r["config"]["score"]: r for r in ood_records}
    for name, metrics in ood_by_score["complexity"]["metrics"].items():
        assert ood_by_score["nll"]["details"]["metrics_complexity"][name] == pytest.approx(metrics)
    assert nll["details"]["lipschitz"]["samples"] == 20
    assert nll["id_accuracy"] is None
    capsys.readouterr()
    key = nll["details"]["flow_key"]
    assert flows[0].stem == key
    assert flows_main(["lipschitz", key, "--samples", "10", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 10


def test_real_outliers_must_not_be_a_test_set():
    from types import SimpleNamespace

    from methods.flow import FlowConfig, NormalizingFlow

    spec = SimpleNamespace(ood=({"name": "noise", "source": "noise"}, {"name": "pics", "source": "photos"}))
    context = SimpleNamespace(benchmark=SimpleNamespace(spec=spec))
    for name in ("noise", "photos"):
        method = NormalizingFlow(FlowConfig(variant="real", real_set=name), context)
        with pytest.raises(HarnessError, match="is a test OOD set of this run"):
            method.synthesize()


def test_real_outliers_come_from_the_named_source():
    from types import SimpleNamespace

    from methods.flow import FlowConfig, NormalizingFlow

    spec = SimpleNamespace(ood=({"name": "noise", "source": "noise"},), image_size=32, channels=1)
    context = SimpleNamespace(benchmark=SimpleNamespace(spec=spec, train=[None] * 40), seed=0)
    outliers = NormalizingFlow(FlowConfig(variant="real", real_set="shapes", real_fraction=0.1), context).synthesize()
    assert outliers.data.shape == (4, 1, 32, 32) and outliers.data.dtype == torch.uint8
    assert outliers.facts["source"] == "shapes" and outliers.data.float().mean() > 0


def test_wrong_channel_count_is_rejected():
    from types import SimpleNamespace

    from harness.data.sets import ImageSet
    from methods.flow import NormalizingFlow

    method = NormalizingFlow.__new__(NormalizingFlow)
    method.flow = Flow(FlowSpec((1, 8, 8), blocks=1, hidden=4))
    method.context = SimpleNamespace()
    rgb = ImageSet("rgb", torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(HarnessError, match=r"built for images shaped \(1, 8, 8\) but rgb has \(3, 8, 8\)"):
        method.bits_per_dim(rgb)
