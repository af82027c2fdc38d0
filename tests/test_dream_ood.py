"""Dream-OOD: per-class boundary sampling against a numpy replica (true top-m boundary points, farthest candidates
for `paper`, the official mis-ordered reshape for `reference`, rescaling to the class token norm), outlier resize
policies, the latent head, and an end-to-end run on mnist5k with the shipped tiny SD model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.cli import main
from harness.components.boundary import BoundarySampling
from harness.components.outlier_images import random_windows, resize_outliers, to_channels_tensor
from harness.components.text_latent import TokenAnchorHead, class_boundary_embeddings

REPO = Path(__file__).resolve().parents[1]


def _kth(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((queries[:, None, :] - bank[None]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k - 1]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_replica(features, labels, config, norms, seed):
    """Dream-OOD's sampling written out in numpy, drawing the same random numbers in the same order."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for c in range(int(labels.max()) + 1):
        bank = _unit(features[labels == c].numpy().astype(np.float64))
        kept_all = []
        for _ in range(config.rounds):
            boundary = np.argsort(-_kth(bank, bank, config.k), kind="stable")[:config.boundary_count]
            order = torch.rand(1, config.boundary_count, generator=generator).argsort(dim=1)[0].numpy()
            points = bank[boundary[order]]
            noise = torch.randn(1, config.boundary_count, config.candidates_per_point, bank.shape[1],
                                generator=generator)[0].double().numpy()
            candidates = points[:, None, :] + config.noise_std * noise
            dist = _kth(bank, _unit(candidates).reshape(-1, bank.shape[1]), config.k)
            dist = dist.reshape(config.boundary_count, config.candidates_per_point)
            if config.selection == "paper":
                chosen = np.argsort(-dist, axis=1)[:, :config.kept_per_point]
            else:  # official KNN_dis_search_distance: point-major distances viewed as (L, P)
                view = dist.reshape(config.candidates_per_point, config.boundary_count)
                chosen = np.argsort(-view, axis=0)[:config.kept_per_point].T
            kept_all.append(np.concatenate([candidates[i, chosen[i]] for i in range(config.boundary_count)]))
        out.append(_unit(np.concatenate(kept_all)) * norms[c].item())
    return np.stack(out)


@pytest.mark.parametrize("selection", ["paper", "reference"])
def test_boundary_sampling_matches_numpy_replica_and_token_norms(selection):
    torch.manual_seed(0)
    features = torch.randn(60, 8)
    labels = torch.arange(2).repeat_interleave(30)
    norms = torch.tensor([0.39, 1.7])
    config = BoundarySampling(k=5, boundary_count=6, candidates_per_point=12, kept_per_point=2, rounds=2,
                              features_per_class=30, noise_std=0.3, selection=selection)
    sampled = class_boundary_embeddings(features, labels, 2, config, norms, seed=3)
    assert sampled.shape == (2, 2 * 6 * 2, 8)
    torch.testing.assert_close(sampled.norm(dim=2), norms[:, None].expand(2, 24))
    np.testing.assert_allclose(sampled.double().numpy(), numpy_replica(features, labels, config, norms, 3),
                               atol=1e-5)


def test_paper_selection_keeps_farther_candidates_than_reference():
    torch.manual_seed(1)
    features = torch.randn(80, 6)
    labels = torch.zeros(80, dtype=torch.long)
    norms = torch.ones(1)
    common = dict(k=10, boundary_count=8, candidates_per_point=40, kept_per_point=2, rounds=3, features_per_class=80,
                  noise_std=0.2)
    bank = _unit(features.numpy().astype(np.float64))
    mean_dist = {}
    for selection in ("paper", "reference"):
        sampled = class_boundary_embeddings(features, labels, 1, BoundarySampling(**common, selection=selection),
                                            norms, seed=0)
        mean_dist[selection] = _kth(bank, sampled[0].double().numpy(), 10).mean()
    assert mean_dist["paper"] > mean_dist["reference"]


def test_sampling_settings_are_checked_with_the_config_names():
    from methods.dream_ood import DreamOODConfig

    with pytest.raises(ValueError, match="k=600 .* features_per_class=500; raise features_per_class or lower k"):
        DreamOODConfig(k=600)
    with pytest.raises(ValueError, match="kept_per_point=20 exceeds candidates_per_point=10"):
        DreamOODConfig(candidates_per_point=10, kept_per_point=20)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        DreamOODConfig(rounds=0)


def test_outlier_resize_policies():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 64, 64)
    for policy in ("bilinear", "nearest", "random"):
        assert resize_outliers(images, 32, policy, generator).shape == (6, 1, 32, 32)
    nearest = resize_outliers(images, 32, "nearest", generator)
    assert torch.equal(nearest, images[:, :, 1::2, 1::2])  # pixel centres, as PIL's NEAREST
    windows = random_windows(images, 32, 0, generator)  # none-random-crop: a patch of the full-size image
    for window, image in zip(windows, images, strict=True):
        found = any(torch.equal(window, image[:, t:t + 32, s:s + 32]) for t in range(33) for s in range(33))
        assert found
    rgb = torch.tensor([[[[255]], [[0]], [[0]]]], dtype=torch.uint8)
    assert to_channels_tensor(rgb, 1).item() == 76  # ITU-R 601 luma of pure red


@pytest.mark.parametrize("source, size", [(256, 32), (45, 32), (20, 32), (37, 224)])
def test_nearest_resize_equals_pil_nearest_on_random_images(source, size):
    rng = np.random.default_rng(source)
    pixels = rng.integers(0, 256, (3, 2, source, source), dtype=np.uint8)
    ours = resize_outliers(torch.from_numpy(pixels).float() / 255, size, "nearest", torch.Generator())
    for image, resized in zip(pixels, ours, strict=True):
        pil = [np.asarray(Image.fromarray(channel).resize((size, size), Image.NEAREST)) for channel in image]
        np.testing.assert_array_equal((resized * 255).round().byte().numpy(), np.stack(pil))


def test_latent_head_is_eq2_dot_product_or_official_cosine_over_temperature():
    anchors = torch.randn(3, 5) * 0.4
    features = torch.randn(2, 4)
    cosine = TokenAnchorHead(4, anchors, temperature=0.1, similarity="cosine")
    z = torch.nn.functional.normalize(cosine.project(features), dim=1)
    torch.testing.assert_close(cosine(features), z @ torch.nn.functional.normalize(anchors, dim=1).T / 0.1)
    assert cosine(features).abs().max() <= 10 + 1e-5
    dot = TokenAnchorHead(4, anchors, temperature=0.1, similarity="dot")
    dot.load_state_dict({**cosine.state_dict(), "anchors": anchors})
    torch.testing.assert_close(dot(features), z @ anchors.T / 0.1)  # eq. 2: T(y)^T z / t, raw token norms


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    for setting, message in [("dream_ood.steps=0", "steps must be >= 1"),
                             ("dream_ood.guidance_scale=-1", "guidance_scale"),
                             ("dream_ood.prompt_template=no class", "exactly one"),
                             ("dream_ood.model=/nonexistent/sd", "does not exist")]:
        code = main(["run", "--methods", "dream_ood", "--set", setting, "--out", str(tmp_path / "out"),
                     "--cache-dir", str(tmp_path / "cache")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_end_to_end_dream_ood_on_mnist5k(tmp_path):
    out = tmp_path / "results"
    code = main(["run", "--methods", "dream_ood", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--set", "classifier.epochs=1", "--set", "dream_ood.latent_epochs=1",
                 "--set", "dream_ood.outliers_per_class=3", "--set", "dream_ood.steps=4",
                 "--set", "dream_ood.rounds=1", "--set", "dream_ood.test_score=phi",
                 "--set", "dream_ood.selection=reference"])
    assert code == 0
    (record_path,) = (out / "records" / "mnist5k").glob("*/seed0.json")
    record = json.loads(record_path.read_text())
    assert record["details"]["selection"] == "reference" and record["details"]["test_score"] == "phi"
    assert record["details"]["outliers"] == 30
    assert record["details"]["substituted_tokens"]["seven"] == "seven</w>"
    assert record["details"]["missing_token_classes"] == [] and record["details"]["class_words"] == "natural"
    gallery = [f for f in record["figures"] if f.endswith("_outliers.png")]
    assert gallery and Image.open(out / gallery[0]).size[0] > 100
    assert "seed0_outliers.png" in (out / "leaderboards" / "mnist5k.md").read_text()
    assert 0.0 <= record["average"]["auroc"] <= 1.0


def test_paper_defaults_and_the_reference_protocol_reproduce_the_official_settings():
    from harness.registry import method_config
    from methods.dream_ood import DreamOOD

    paper = method_config(DreamOOD, "cifar100", {})
    assert (paper.latent_similarity, paper.sigma, paper.sigma_meaning, paper.phi, paper.test_score, paper.beta,
            paper.class_words) == ("dot", 0.03, "variance", "mlp3", "phi", 2.5, "natural")
    assert paper.sampling.noise_std == pytest.approx(0.03 ** 0.5)  # N(z, sigma^2 I) with sigma^2 = 0.03
    official = method_config(DreamOOD, "cifar100", {"protocol": "reference"})
    assert (official.latent, official.sampling.noise_std, official.phi, official.test_score, official.selection,
            official.class_words) == (DreamOOD.Config().latent.__class__(200, 256, 0.1, "cosine"), 0.07, "linear",
                                      "energy", "reference", "official")
    inet, inet_ref = method_config(DreamOOD, "imagenet100", {}), method_config(DreamOOD, "imagenet100",
                                                                               {"protocol": "reference"})
    assert (inet.beta, inet.boundary_count, inet.phi) == (1.0, 200, "mlp3")
    assert (inet_ref.beta, inet_ref.boundary_count, inet_ref.phi, inet_ref.sampling.noise_std) == (1.0, 200, "mlp",
                                                                                                    0.03)
    # mnist5k's reference protocol is the official code's behaviour (with the paper's selection where asked)
    official = {"latent_similarity": "cosine", "sigma": 0.07, "sigma_meaning": "std", "phi": "linear",
                "test_score": "energy", "selection": "paper"}
    reference = method_config(DreamOOD, "mnist5k", {"protocol": "reference", "selection": "paper"})
    assert {k: getattr(reference, k) for k in official} == official
    assert method_config(DreamOOD, "mnist5k", {"protocol": "reference", "phi": "mlp"}).phi == "mlp"  # --set wins


def test_crop_policy_refuses_outliers_smaller_than_the_id_images():
    from harness.components.outlier_images import OutlierImageSource
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="smaller than the ID size 224"):
        OutlierImageSource(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 4, 224, "none-random-crop", 0, True, 0)
    OutlierImageSource(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 4, 224, "bilinear", 0, True, 0)


def test_outliers_dir_trains_on_the_folder_and_skips_synthesis(tmp_path, capsys):
    """dream_ood.outliers_dir: the folder's images are the outliers (no SD model is loaded), recorded with its
    fingerprint; an empty folder is refused in one line before any work."""
    from types import SimpleNamespace

    from methods.dream_ood import DreamOOD, DreamOODConfig

    (tmp_path / "own").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(tmp_path / "own" / f"{i}.png")
    method = DreamOOD.__new__(DreamOOD)
    method.config = DreamOODConfig(model="/nonexistent", outliers_dir=str(tmp_path / "own"))
    method.context = SimpleNamespace(benchmark=SimpleNamespace(spec=SimpleNamespace(channels=1)))
    DreamOOD.check_config(method.config, None)  # the model is not needed
    outliers = method.synthesize()
    assert outliers.data.shape == (3, 1, 32, 32) and outliers.labels is None
    assert outliers.facts["outliers_fingerprint"] == outliers.fingerprint  # the record's details hold the facts
    assert outliers.facts["outliers_dir"] == str((tmp_path / "own").resolve())  # outside the data home: absolute
    (tmp_path / "empty").mkdir()
    code = main(["run", "--methods", "dream_ood", "--set", f"dream_ood.outliers_dir={tmp_path / 'empty'}",
                 "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "dream_ood.outliers_dir" in err and "holds no images" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
