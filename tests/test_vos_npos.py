"""VOS and NPOS building blocks (queues, Gaussian synthesis, boundary search, selection) and an end-to-end run."""

import json

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from harness.cli import main
from harness.components.boundary import (
    boundary_indices,
    kth_neighbor_distance_by_class,
    sample_boundary_outliers,
    select_candidates,
)
from harness.components.feature_queues import ClassFeatureQueues
from harness.errors import HarnessError
from methods.npos import NPOSConfig
from methods.vos import VOSConfig, shared_gaussian, virtual_outliers


def clustered_queues(classes=3, n=60, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 1, dim, generator=gen) * 4
    scales = torch.rand(1, 1, dim, generator=gen) + 0.3
    return centres + scales * torch.randn(classes, n, dim, generator=gen)


# ---------------------------------------------------------------- queues

def test_queues_are_fifo_per_class_and_detached():
    queues = ClassFeatureQueues(num_classes=2, size=3)
    feats = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 2).requires_grad_()
    labels = torch.tensor([0, 1, 0, 0, 1, 0, 1, 1, 1, 0])
    queues.push(feats[:4], labels[:4])
    assert not queues.full and queues.counts.tolist() == [3, 1]
    queues.push(feats[4:], labels[4:])
    assert queues.full
    assert queues.data[0, :, 0].tolist() == [3.0, 5.0, 9.0]   # the 3 most recent class-0 features, oldest first
    assert queues.data[1, :, 0].tolist() == [6.0, 7.0, 8.0]
    assert not queues.data.requires_grad


# ---------------------------------------------------------------- VOS

def test_shared_covariance_equals_numpy_on_centred_queues():
    queues = clustered_queues()
    means, cov = shared_gaussian(queues, eps=1e-4)
    q = queues.numpy().astype(np.float64)
    centred = np.concatenate([q[c] - q[c].mean(0) for c in range(len(q))])
    expected = np.cov(centred.T, bias=True) + 1e-4 * np.eye(q.shape[2])
    np.testing.assert_allclose(cov.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(means.numpy(), q.mean(1), rtol=1e-5)


def test_vos_keeps_samples_below_a_likelihood_quantile_of_the_queue():
    queues = clustered_queues()
    kept = virtual_outliers(queues, samples_per_class=5000, kept_per_class=4, eps=1e-4,
                            generator=torch.Generator().manual_seed(1))
    means, cov = shared_gaussian(queues, eps=1e-4)
    for c in range(len(queues)):
        gaussian = MultivariateNormal(means[c].double(), covariance_matrix=cov)
        id_loglik = gaussian.log_prob(queues[c].double())
        kept_loglik = gaussian.log_prob(kept[c].double())
        assert (kept_loglik < torch.quantile(id_loglik, 0.01)).all()
        # and they are the lowest-likelihood draws: below the 1st percentile of fresh samples
        fresh = gaussian.log_prob(gaussian.sample((5000,)))
        assert (kept_loglik < torch.quantile(fresh, 0.01)).all()


def test_vos_norm_shortcut_matches_drawing_every_sample():
    """The kept draw's whitened squared norm must follow the law of the largest of S full Gaussian draws."""
    from scipy.stats import ks_2samp

    queues = clustered_queues(classes=1, n=200, dim=6)
    means, cov = shared_gaussian(queues, eps=1e-4)
    whiten = torch.linalg.inv(torch.linalg.cholesky(cov))
    gen = torch.Generator().manual_seed(5)
    shortcut = [float((whiten @ (virtual_outliers(queues, 500, 1, 1e-4, gen)[0, 0].double() - means[0]))
                       .square().sum()) for _ in range(200)]
    brute = torch.randn(200, 500, 6, generator=gen, dtype=torch.float64).square().sum(2).amax(1).numpy()
    assert ks_2samp(shortcut, brute).pvalue > 0.01
    assert ks_2samp(shortcut, brute * 0.8).pvalue < 0.01  # the test can tell a wrong tail apart


# ---------------------------------------------------------------- NPOS / boundary search

def normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute_kth(bank, queries, k):
    d = np.linalg.norm(queries[:, None, :] - bank[None, :, :], axis=2)
    return np.sort(d, axis=1)[:, k - 1]


def test_kth_distance_matches_brute_force_and_faiss():
    from harness.components.scores import kth_neighbor_distance

    bank = normalise(clustered_queues(classes=2, n=40).numpy())
    queries = normalise(np.random.default_rng(0).standard_normal((2, 25, 8)).astype(np.float32))
    got = kth_neighbor_distance_by_class(torch.from_numpy(bank), torch.from_numpy(queries), 7).numpy()
    for c in range(2):
        np.testing.assert_allclose(got[c], brute_kth(bank[c], queries[c], 7), atol=1e-5)
        np.testing.assert_allclose(got[c], kth_neighbor_distance(bank[c], queries[c], 7), atol=1e-5)


def test_boundary_points_are_the_true_top_m_by_kth_neighbour_distance():
    bank = normalise(clustered_queues(classes=3, n=50).numpy())
    got = boundary_indices(torch.from_numpy(bank), k=10, count=8).numpy()
    for c in range(3):
        kth = brute_kth(bank[c], bank[c], 10)   # the point itself is its first neighbour
        assert set(got[c]) == set(np.argsort(-kth)[:8])


def reference_knn_dis_search_distance(target, bank, k, num_points, length):
    """numpy replica of the official KNN_dis_search_distance (dream-ood / npos): candidates are point-major
    (row p * length + j); their k-th-neighbour distances are viewed as (length, -1) and ranked per column."""
    normed = normalise(target)
    d2 = ((normed[:, None, :] - bank[None]) ** 2).sum(-1)
    kth = np.sort(d2, axis=1)[:, k - 1]                      # faiss returns squared L2
    k_th = kth.reshape(length, -1)                           # k_th_distance.view(length, -1)
    min_idx = np.argsort(-k_th, axis=0, kind="stable")[:num_points]  # torch.topk(k_th, num_points, dim=0)
    rows = [i * length + min_idx[:, i] for i in range(min_idx.shape[1])]
    return np.concatenate(rows)


def test_reference_selection_matches_numpy_replica_of_official_function():
    rng = np.random.default_rng(3)
    points, length, keep, k = 3, 40, 5, 6
    bank = normalise(rng.standard_normal((30, 8)))
    centres = np.repeat(rng.standard_normal((points, 8)), length, axis=0)  # point-major, as in the official code
    target = centres + 0.5 * rng.standard_normal((points * length, 8))
    expected = reference_knn_dis_search_distance(target, bank, k, keep, length)
    distances = kth_neighbor_distance_by_class(torch.from_numpy(bank)[None].float(),
                                               torch.from_numpy(normalise(target))[None].float(), k)
    chosen = select_candidates(distances.reshape(1, points, length), keep, "reference")[0].numpy()
    got = np.concatenate([p * length + chosen[p] for p in range(points)])
    assert sorted(got.tolist()) == sorted(expected.tolist())
    paper = select_candidates(distances.reshape(1, points, length), keep, "paper")[0].numpy()
    assert set(paper.ravel().tolist()) != set(chosen.ravel().tolist())  # the reshape really changes the choice


def test_paper_selection_keeps_farther_candidates_than_it_discards():
    distances = torch.rand(4, 3, 50, generator=torch.Generator().manual_seed(0))
    chosen = select_candidates(distances, 10, "paper")
    for c in range(4):
        for p in range(3):
            kept = set(chosen[c, p].tolist())
            dropped = [j for j in range(50) if j not in kept]
            assert distances[c, p, list(kept)].min() > distances[c, p, dropped].max()


def test_sampled_outliers_are_farther_from_the_class_than_id_points():
    bank = clustered_queues(classes=3, n=80, dim=8)
    out = sample_boundary_outliers(bank, k=10, boundary_count=12, points_per_class=2, candidates_per_point=60,
                                   kept_per_point=6, noise_std=1.0, selection="paper",
                                   generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 12, 8)
    normed = torch.nn.functional.normalize(bank, dim=2)
    id_kth = kth_neighbor_distance_by_class(normed, normed, 10)
    out_kth = kth_neighbor_distance_by_class(normed, torch.nn.functional.normalize(out, dim=2), 10)
    assert (out_kth.median(dim=1).values > id_kth.median(dim=1).values).all()


def test_queue_too_small_for_k():
    with pytest.raises(HarnessError, match="queue"):
        kth_neighbor_distance_by_class(torch.zeros(2, 5, 3), torch.zeros(2, 4, 3), 6)
    with pytest.raises(ValueError, match="queue_size=100; raise queue_size or lower k"):
        NPOSConfig(queue_size=100, k=300)
    with pytest.raises(ValueError, match="points_per_class=60 exceeds boundary_count=50"):
        NPOSConfig(boundary_count=50, points_per_class=60)


# ---------------------------------------------------------------- CLI: bad input and end-to-end

@pytest.mark.parametrize("args, message", [
    (["--methods", "vos", "--set", "vos.beta=-1"], "beta"),
    (["--methods", "vos", "--set", "vos.start_epoch=12"], "start_epoch"),
    (["--methods", "npos", "--set", "classifier.epochs=3", "--set", "npos.start_epoch=3"], "start_epoch"),
    (["--methods", "npos", "--set", "npos.k=500"], "queue"),
    (["--methods", "npos", "--set", "npos.selection=random"], "paper, reference"),
])
def test_bad_input_is_one_line_error_before_any_work(tmp_path, capsys, args, message):
    code = main(["run", *args, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("error:") and "Traceback" not in err
    assert not (tmp_path / "out" / "records").exists()


def test_vos_config_defaults_are_the_papers():
    config = VOSConfig()
    assert (config.queue_size, config.samples_per_class, config.kept_per_class, config.start_fraction, config.beta,
            config.covariance_eps) == (1000, 10000, 1, 0.4, 0.1, 1e-4)
    assert config.start_epoch is None and config.phi == "mlp3"


@pytest.mark.slow
def test_end_to_end_vos_npos_on_mnist5k_write_records(tmp_path):
    out = tmp_path / "out"
    code = main(["run", "--methods", "vos,npos", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--set", "classifier.epochs=1", "--set", "vos.start_epoch=0", "--set", "vos.queue_size=20",
                 "--set", "vos.samples_per_class=500", "--set", "npos.start_epoch=0", "--set", "npos.queue_size=20",
                 "--set", "npos.k=5", "--set", "npos.boundary_count=5", "--set", "npos.candidates_per_point=20",
                 "--set", "npos.kept_per_point=4", "--set", "npos.selection=reference"])
    assert code == 0
    records = sorted((out / "records" / "mnist5k").rglob("*.json"))
    by_method = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in records}
    assert set(by_method) == {"vos", "npos"}
    assert by_method["npos"]["config"]["selection"] == "reference"
    assert by_method["vos"]["details"]["test_score"] == "energy"
    for record in by_method.values():
        assert set(record["metrics"]) == {"glyphs", "textures", "photos", "faces", "noise"}
        assert 0.0 <= record["average"]["auroc"] <= 1.0
    assert list((out / "leaderboards").glob("mnist5k*"))


# ---------------------------------------------------------------- CIDER losses (NPOS's paper objective)

def _cider_replica(prototypes, z, labels, momentum, t):
    """The official per-sample loop and the two losses written out directly (numpy, float64)."""
    protos = prototypes.copy()
    for j in range(len(z)):
        v = protos[labels[j]] * momentum + z[j] * (1 - momentum)
        protos[labels[j]] = v / np.linalg.norm(v)
    c = len(protos)
    sims = protos @ protos.T / t
    dis = np.mean([np.log(np.mean([np.exp(sims[i, j]) for j in range(c) if j != i])) for i in range(c)])
    unit = protos / np.linalg.norm(protos, axis=1, keepdims=True)
    logits = z @ unit.T / t
    comp = -np.mean([logits[n, labels[n]] - np.log(np.exp(logits[n]).sum()) for n in range(len(z))])
    return protos, dis, comp


def test_cider_losses_match_a_direct_computation_on_a_toy_batch():
    from methods.npos.cider import compactness_loss, dispersion_loss, update_prototypes

    generator = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(13, 6, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.tensor([2, 0, 2, 2, 1, 0, 3, 2, 1, 1, 0, 2, 3])
    start = torch.nn.functional.normalize(torch.randn(4, 6, generator=generator, dtype=torch.float64), dim=1)
    start[3] = 0.0  # a class not seen before: its first sample sets the prototype
    protos = update_prototypes(start, z, labels, 0.5)
    want_protos, want_dis, want_comp = _cider_replica(start.numpy(), z.numpy(), labels.numpy(), 0.5, 0.1)
    np.testing.assert_allclose(protos.numpy(), want_protos, atol=1e-12)
    assert float(dispersion_loss(protos, 0.1)) == pytest.approx(want_dis, abs=1e-9)
    assert float(compactness_loss(z, protos, labels, 0.1)) == pytest.approx(want_comp, abs=1e-9)


def test_cider_dispersion_gradient_reaches_the_batch_features():
    from methods.npos.cider import dispersion_loss, update_prototypes

    z = torch.nn.functional.normalize(torch.randn(8, 5), dim=1).requires_grad_()
    protos = update_prototypes(torch.zeros(3, 5), z, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), 0.5)
    dispersion_loss(protos, 0.1).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_cider_hook_trains_on_two_views_with_fc_as_a_probe():
    from harness.classifier.models import build_classifier
    from harness.classifier.training import ClassifierConfig, train_classifier
    from harness.data.sets import ImageSet
    from methods.npos.cider import CIDERLoss

    gen = torch.Generator().manual_seed(0)
    train = ImageSet("toy", (torch.rand(48, 1, 8, 8, generator=gen) * 255).to(torch.uint8), torch.arange(48) % 3)
    seen = []

    class Spy(CIDERLoss):
        def loss(self, batch, model):
            seen.append((len(batch.images), batch.labels[:16].tolist() == batch.labels[16:].tolist()))
            return super().loss(batch, model)

    torch.manual_seed(0)
    model = build_classifier("resnet_small", 1, 3, [0.5], [0.25])
    spy = Spy(3, model.feature_dim, dim=8)
    config = ClassifierConfig(backbone="resnet_small", epochs=1, batch_size=16, lr=0.01)
    train_classifier(model, train, config, torch.device("cpu"), 0, [spy])
    assert seen == [(32, True)] * 3  # two augmented views of the 16 images, labels repeated
    torch.testing.assert_close(spy.state.prototypes.norm(dim=1), torch.ones(3))

    class ProbeOnly(CIDERLoss):  # only the probe's cross-entropy: the encoder must not move
        def loss(self, batch, model):
            return None, {}

    torch.manual_seed(0)
    model = build_classifier("resnet_small", 1, 3, [0.5], [0.25])
    encoder = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    plain_sgd = ClassifierConfig(backbone="resnet_small", epochs=1, batch_size=16, lr=0.01, weight_decay=0.0,
                                 momentum=0.0, nesterov=False)
    train_classifier(model, train, plain_sgd, torch.device("cpu"), 0, [ProbeOnly(3, model.feature_dim, dim=8)])
    moved = [k for k, v in model.state_dict().items() if k in encoder and v.dtype.is_floating_point
             and "running" not in k and not torch.equal(v, encoder[k])]
    assert moved == []
    assert NPOSConfig().objective == "cider"


# ---------------------------------------------------------------- VOS with beta=0 is the baseline, bit for bit

def _tiny_context(cache, seed=0):
    """A RunContext on the mnist5k spec with tiny random ID/OOD sets and a 2-epoch, 4-steps-per-epoch recipe."""
    from harness.classifier.training import ClassifierConfig
    from harness.context import RunContext
    from harness.data.benchmarks import Benchmark
    from harness.data.sets import ImageSet
    from harness.data.spec import load_spec

    gen = torch.Generator().manual_seed(123)
    def images(n):
        return (torch.rand(n, 1, 32, 32, generator=gen) * 255).to(torch.uint8)
    labels = torch.arange(60) % 10
    train = ImageSet("tiny-train", images(60), labels)
    test = ImageSet("tiny-test", images(30), torch.arange(30) % 10)
    benchmark = Benchmark(load_spec("mnist5k"), train, test, {"noise": ImageSet("tiny-ood", images(30))})
    recipe = ClassifierConfig(backbone="resnet_small", epochs=2, batch_size=16, lr=0.05, hflip=False,
                              crop_padding=2)
    return RunContext(benchmark, seed, torch.device("cpu"), cache, recipe)


def _run_like_the_runner(method, seed):
    """What `harness.runner.execute_runs` does around a method: reseed, synthesize, reseed, train, score."""
    from harness.classifier.training import seed_everything
    from harness.runner import evaluate

    seed_everything(seed)
    outliers = method.synthesize()
    seed_everything(seed)
    method.train(outliers)
    return evaluate(method, method.context.benchmark, "id")


@pytest.mark.parametrize("weighted_energy", [True, False])
def test_vos_with_beta_zero_trains_the_baseline_classifier_bit_for_bit(tmp_path, one_torch_thread, weighted_energy):
    """beta=0 removes VOS's loss; nothing else of VOS (its phi and energy weights, its sampling RNG, its extra
    optimiser parameters, its outlier forward through fc) may change the classifier or the energy scores."""
    from harness.cache import Cache
    from methods.energy import Energy, EnergyConfig
    from methods.vos import VOS

    cache = Cache(tmp_path / "cache")
    context = _tiny_context(cache)
    energy = Energy(EnergyConfig(), context)
    base_metrics, base_average, base_acc, base_scores = _run_like_the_runner(energy, 0)
    vos = VOS(VOSConfig(beta=0.0, start_epoch=0, queue_size=2, samples_per_class=50,
                        weighted_energy=weighted_energy), context)
    metrics, average, acc, scores = _run_like_the_runner(vos, 0)
    assert vos.classifier.key != energy.classifier.key  # really two trainings, not a cache hit
    assert vos.regularizer.steps_with_term > 0  # the regulariser ran (queues filled, outliers drawn)
    base_state, state = energy.classifier.model.state_dict(), vos.classifier.model.state_dict()
    assert base_state.keys() == state.keys()
    differing = [k for k in state if not torch.equal(state[k], base_state[k])]
    assert differing == []
    for name in base_scores:
        assert np.array_equal(scores[name], base_scores[name]), name
    assert (metrics, average, acc) == (base_metrics, base_average, base_acc)


def test_vos_records_and_plots_the_regulariser_per_epoch_also_on_a_cache_hit(tmp_path, one_torch_thread):
    from PIL import Image

    from harness.cache import Cache
    from methods.vos import VOS

    cache = Cache(tmp_path / "cache")
    context = _tiny_context(cache)
    config = VOSConfig(beta=0.1, start_epoch=1, queue_size=2, samples_per_class=50)
    vos = VOS(config, context)
    _run_like_the_runner(vos, 0)
    record = vos.details()["regulariser"]
    assert record["epoch"] == [0, 1] and record["steps"] == [0, 4] and record["start_epoch"] == 1
    assert record["loss"][0] is None and record["head_accuracy"][0] is None  # before start_epoch: no term
    assert record["loss"][1] > 0 and 0.0 <= record["head_accuracy"][1] <= 1.0
    (figure,) = vos.figures(tmp_path, "seed0")
    assert figure.name == "seed0_regulariser.png" and Image.open(figure).size[0] > 200
    again = VOS(config, context)
    _run_like_the_runner(again, 0)
    assert cache.hits("classifier") >= 1 and again.details()["regulariser"] == record


def test_the_regulariser_orientation_is_phis_slope_at_the_id_median_energy(tmp_path, one_torch_thread):
    from harness.cache import Cache
    from methods.vos import VOS

    vos = VOS(VOSConfig(beta=0.1, start_epoch=0, queue_size=2, samples_per_class=50, phi="linear"),
              _tiny_context(Cache(tmp_path / "cache")))
    _run_like_the_runner(vos, 0)
    facts = vos.orientation()
    weight = vos.regularizer.phi.weight.detach()
    assert facts["phi_log_odds_slope_at_id"] == pytest.approx(float(weight[1, 0] - weight[0, 0]), abs=1e-4)
    with torch.no_grad():  # VOS weights the logsumexp (eq. 5 of VOS): the E(x) phi sees
        energies = vos.regularizer.energy(vos._logits(vos.context.benchmark.test))
    assert facts["id_energy_median"] == pytest.approx(float(energies.median()), abs=1e-4)
    with torch.no_grad():
        vos.regularizer.phi.weight.neg_()
    flipped = vos.orientation()
    assert flipped["inverted"] == (not facts["inverted"])
    assert flipped["phi_log_odds_slope_at_id"] == pytest.approx(-facts["phi_log_odds_slope_at_id"], abs=1e-4)
