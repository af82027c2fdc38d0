"""NCIS plugin: config and protocol switch, bring-your-own outliers (folder loading, fingerprint in the cache key,
bad folders), bad input before any work, and the end-to-end `run --methods ncis,dream_ood` on mnist5k."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from harness.classifier.training import ClassifierConfig
from harness.cli import main
from harness.components.outlier_images import load_outlier_folder
from harness.config import changed_fields
from harness.context import RunContext
from harness.errors import HarnessError
from harness.plan import RunRequest, plan
from harness.registry import method_config
from harness.runner import execute
from methods.ncis import NCIS, NCISConfig

REPO = Path(__file__).resolve().parents[1]


def _write_images(folder: Path, count: int, size: int = 12, seed: int = 0, mode: str = "L") -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for i in range(count):
        shape = (size, size) if mode == "L" else (size, size, 3)
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(array, mode).save(folder / f"{i:03d}.png")
        arrays.append(array)
    return arrays


def test_outlier_folder_images_labels_and_fingerprint(tmp_path):
    flat = _write_images(tmp_path / "flat", 3, mode="RGB")
    images, labels, fingerprint = load_outlier_folder(tmp_path / "flat", channels=3)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 12, 12) and labels is None
    np.testing.assert_array_equal(images[1].permute(1, 2, 0).numpy(), flat[1])  # bytes read exactly, no resize
    grey, _, _ = load_outlier_folder(tmp_path / "flat", channels=1)
    assert grey.shape == (3, 1, 12, 12)

    _write_images(tmp_path / "byclass" / "b_dog", 2, seed=1)
    _write_images(tmp_path / "byclass" / "a_cat", 3, seed=2)
    _, labels, fp_classes = load_outlier_folder(tmp_path / "byclass", channels=1)
    assert labels.tolist() == [0, 0, 0, 1, 1]  # sorted class subfolders
    assert load_outlier_folder(tmp_path / "byclass", channels=1)[2] == fp_classes  # deterministic
    _write_images(tmp_path / "byclass" / "a_cat", 1, seed=9)  # overwrite one file's pixels
    assert load_outlier_folder(tmp_path / "byclass", channels=1)[2] != fp_classes


def test_bad_outlier_folders_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="holds no images"):
        load_outlier_folder(tmp_path / "empty", 1)
    with pytest.raises(HarnessError, match="does not exist"):
        load_outlier_folder(tmp_path / "missing", 1)
    _write_images(tmp_path / "broken", 2)
    (tmp_path / "broken" / "zz.png").write_bytes(b"not a png")
    with pytest.raises(HarnessError, match=r"cannot read outlier image .*zz\.png"):
        load_outlier_folder(tmp_path / "broken", 1)
    _write_images(tmp_path / "sizes", 1, size=12)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "sizes" / "small.png")
    with pytest.raises(HarnessError, match=r"small\.png is 8x8"):
        load_outlier_folder(tmp_path / "sizes", 1)


def test_paper_defaults_and_reference_protocol_change_exactly_the_documented_fields():
    paper = NCISConfig()
    assert (paper.scheduler, paper.steps, paper.guidance_scale, paper.beta, paper.covariance_ridge,
            paper.invariant_variance_percent) == \
        ("ddim", 50, 7.5, 1.0, 1e-5, 2.0)
    assert paper.prompt_template == "A high-quality image of a {}" and paper.invariants == "first"
    assert (paper.phi, paper.test_score, paper.outlier_resize, paper.sampling) == ("mlp", "phi", "random", "cvpn")
    assert paper.keep_below_id_percentile == 1.0  # Sec. 3.4's rejection sampling, bounded at the ID 1st percentile
    for benchmark in ("mnist5k", "cifar100", "imagenet100"):
        base = method_config(NCIS, benchmark, {})
        reference = method_config(NCIS, benchmark, {"protocol": "reference"})
        documented = {**NCIS.reference_settings["*"], **NCIS.reference_settings.get(benchmark, {})}
        changed = changed_fields(reference, base)
        assert changed.pop("protocol") == "reference"
        assert changed == documented, benchmark
    reference = method_config(NCIS, "cifar100", {"protocol": "reference", "scheduler": "ddim"})
    # a --set field still overrides the protocol
    assert reference.scheduler == "ddim" and reference.invariant_variance_percent == 5.0
    assert method_config(NCIS, "cifar100", {}).epochs == 250
    old = method_config(NCIS, "cifar100", {"p": "3", "lam": "1e-3"})  # the fields' old names, still accepted
    assert (old.invariant_variance_percent, old.covariance_ridge) == (3.0, 1e-3)
    old = method_config(NCIS, "cifar100", {"protocol": "reference", "p": "3"})  # over the protocol's own value
    assert old.invariant_variance_percent == 3.0


def _recipe(benchmark_epochs: int, run_epochs: int, **fields) -> ClassifierConfig:
    """The recipe NCIS trains with (`RunContext.recipe` of its epochs and batch size) in a run whose recipe has
    `run_epochs` where the spec's has `benchmark_epochs`."""
    config = NCISConfig(**fields)
    context = RunContext(None, 0, None, None, ClassifierConfig(epochs=run_epochs, batch_size=160),
                         epoch_ratio=Fraction(run_epochs, benchmark_epochs))
    return context.recipe(config.epochs, config.batch_size)


def test_classifier_recipe_override_follows_the_run_scaling():
    assert _recipe(100, 100).epochs == 100 and _recipe(100, 100).batch_size == 160  # no override: the run's recipe
    assert _recipe(100, 100, epochs=250).epochs == 250  # CIFAR-100 paper: 250 epochs
    assert _recipe(100, 2, epochs=250).epochs == 5  # preset quick (epoch_scale 0.02) scales NCIS's epochs too
    assert _recipe(100, 100, batch_size=256).batch_size == 256


def test_outliers_dir_fingerprint_enters_the_classifier_key(tmp_path):
    _write_images(tmp_path / "own", 4, size=32)
    calls = []
    method = NCIS.__new__(NCIS)
    method.config = NCISConfig(outliers_dir=str(tmp_path / "own"), baseline_msp=False)
    spec = SimpleNamespace(channels=1, image_size=32, num_classes=10, classifier={"epochs": 12})
    method.context = SimpleNamespace(
        benchmark=SimpleNamespace(spec=spec), seed=0, recipe=lambda epochs, batch_size: ClassifierConfig(epochs=1),
        train_classifier=lambda purpose, config, hooks, key_parts: calls.append(key_parts))
    first = method.synthesize()
    method.train(first)
    _write_images(tmp_path / "own", 1, size=32, seed=5)  # same names, new pixels
    second = method.synthesize()
    method.train(second)
    assert first.fingerprint != second.fingerprint
    assert calls[0][1] == first.fingerprint and calls[1][1] == second.fingerprint
    details = {**second.facts, **method.details()}  # as the runner records them
    assert details["outliers_fingerprint"] == second.fingerprint and details["outliers"] == 4


def _strip_vae_encoder(source: Path, target: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    (weights,) = (target / "vae").glob("*.safetensors")
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("encoder.")}, weights)
    return target


def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, model_dir):
    (tmp_path / "empty").mkdir()
    decoder_only = _strip_vae_encoder(model_dir, tmp_path / "decoder-only")
    for setting, message in [("ncis.covariance_ridge=0", "covariance_ridge=0.0 must be > 0"),
                             ("ncis.lam=0", "covariance_ridge=0.0 must be > 0"),  # the old spelling still works
                             ("ncis.invariant_variance_percent=0", "must be a percentage"),
                             ("ncis.p=0", "invariant_variance_percent=0.0 must be a percentage"),
                             ("ncis.max_per_class=1", "max_per_class=1 embeds fewer images"),
                             ("ncis.model=/nonexistent/sd", "does not exist"),
                             (f"ncis.model={decoder_only}", "has no encoder weights"),
                             (f"ncis.outliers_dir={tmp_path / 'empty'}", "holds no images"),
                             (f"ncis.outliers_dir={tmp_path / 'nothing'}", "does not exist"),
                             ("ncis.prompt_template=no class", "exactly one"),
                             ("ncis.keep_below_id_percentile=150", "=150.0 must be a percentage"),
                             ("ncis.phi_orientation=up", "phi_orientation"),
                             ("ncis.embedding_seed=-1", "embedding_seed=-1 must be >= 0"),
                             ("ncis.embedding_seed=first", "is not an integer")]:
        code = main(["run", "--methods", "ncis", "--set", setting, "--out", str(tmp_path / "out"),
                     "--cache-dir", str(tmp_path / "cache")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, (setting, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_generation_substitutes_the_named_token(tmp_path, backend):
    from harness.cache import Cache
    from harness.diffusion.backend import GenerationConfig, read_png
    from harness.diffusion.stage import generate_images

    config = GenerationConfig("ddim", steps=1, guidance_scale=1.0, batch_size=2)
    vectors = torch.randn(2, backend.token_dim) * 0.1
    cache = Cache(tmp_path / "cache")
    args = (backend, cache, ["cat dog"], torch.zeros(2, dtype=torch.long), torch.arange(2), config, "{}", vectors)
    paths = generate_images(*args, token_names=["dog"])  # the official code's embedding word inside a longer name
    assert read_png(paths[0])[1]["substituted_token"] == "dog</w>"
    default = generate_images(*args)
    assert read_png(default[0])[1]["substituted_token"] == "cat</w>" and default[0].parent != paths[0].parent
    with pytest.raises(HarnessError, match="does not occur in prompt"):
        generate_images(*args, token_names=["bird"])


TINY_NCIS = {"max_per_class": "3", "images_per_call": "15", "timesteps_per_image": "4", "embedding_iterations": "2",
             "cvpn_epochs": "2", "rounds": "1", "candidates_per_round": "40", "kept_per_round": "2",
             "outliers_per_class": "2", "steps": "2", "covariance": "shrinkage"}  # 3 per class < D = 64


@pytest.mark.slow
def test_end_to_end_ncis_and_dream_ood_on_mnist5k(tmp_path, session_cache):
    overrides = {"classifier": {"epochs": "1"}, "ncis": TINY_NCIS,
                 "dream_ood": {"latent_epochs": "1", "outliers_per_class": "2", "steps": "2", "rounds": "1"}}
    records = execute(plan(RunRequest(methods=["ncis", "dream_ood"], overrides=overrides, out_dir=tmp_path / "out")),
                      cache=session_cache)
    assert [r.method for r in records] == ["ncis", "dream_ood"]
    ncis = json.loads(records[0].path(tmp_path / "out").read_text())
    details = ncis["details"]
    assert details["protocol"] == "paper" and details["sampling"] == "cvpn" and details["outliers"] == 20
    assert details["embedded_images"] == 30 and details["embedded_per_class_min"] == 3
    assert details["substituted_tokens"]["seven"] == "seven</w>" and details["missing_token_classes"] == []
    assert 1 <= details["invariant_k"] <= 63 and details["reconstruction_error"] < 1e-4
    assert details["embedding_loss_final_mean"] < details["embedding_loss_initial_mean"]
    assert np.isfinite(details["cvpn_invariant_mse"]) and details["classifier_epochs"] == 1
    assert ncis["config"]["max_per_class"] == 3 and 0.0 <= ncis["average"]["auroc"] <= 1.0
    assert details["covariance"] == "shrinkage" and set(details["log_likelihood"]["per_class"]) == set(
        json.loads((REPO / "datasets/mnist5k.json").read_text())["class_names"])
    assert details["baseline_msp"]["outliers"]["count"] == 20 and details["baseline_msp"]["id_test"]["count"] == 1000
    assert details["regulariser"]["epoch"] == [0] and details["regulariser"]["steps"][0] > 0
    assert any(f.endswith("_regulariser.png") for f in ncis["figures"])
    dream = json.loads(records[1].path(tmp_path / "out").read_text())["details"]
    # the shipped model is named relative to the data home, so records do not carry the checkout's location
    assert details["model_directory"] == dream["model_directory"] == "models/tiny-sd-mnist5k"
    gallery = [f for f in ncis["figures"] if f.endswith("_outliers.png")]
    assert gallery and Image.open(tmp_path / "out" / gallery[0]).size[0] > 100
    board = (tmp_path / "out" / "leaderboards" / "mnist5k.md").read_text()
    assert "| ncis(" in board and "| dream_ood(" in board
    # a second run finds every NCIS stage in the cache (embeddings, cVPN, images, classifier)
    before = {stage: session_cache.misses(stage) for stage in ("ncis-embeddings", "ncis-cvpn", "generation",
                                                               "classifier")}
    again = {"classifier": overrides["classifier"], "ncis": TINY_NCIS}
    execute(plan(RunRequest(methods=["ncis"], overrides=again, out_dir=tmp_path / "again")), cache=session_cache)
    assert {stage: session_cache.misses(stage) for stage in before} == before
    # another run seed shares the embeddings (embedding_seed is fixed) and redraws every later stage
    execute(plan(RunRequest(methods=["ncis"], overrides=again, seeds=[1], out_dir=tmp_path / "again")),
            cache=session_cache)
    assert session_cache.misses("ncis-embeddings") == before["ncis-embeddings"]
    assert session_cache.misses("ncis-cvpn") == before["ncis-cvpn"] + 1


# ---------------------------------------------------------------- eq. 8's class Gaussians: N_c vs D, shrinkage

def _sampling_method(covariance="sample", max_per_class=None, num_classes=3):
    """An NCIS instance whose stages 2-3 run on given embeddings (linear invariants: no cVPN to train)."""
    method = NCIS.__new__(NCIS)
    method.config = NCISConfig(sampling="linear", covariance=covariance, max_per_class=max_per_class, rounds=2,
                               candidates_per_round=200, kept_per_round=5, outliers_per_class=8,
                               invariant_variance_percent=20.0)
    spec = SimpleNamespace(class_names=[f"class{c}" for c in range(num_classes)], num_classes=num_classes)
    method.context = SimpleNamespace(seed=0, benchmark=SimpleNamespace(spec=spec), device=torch.device("cpu"))
    return method


def _class_embeddings(per_class, dim=8, num_classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.linspace(2.0, 0.2, dim)
    e = torch.cat([torch.randn(n, dim, generator=gen) * scales + 4 * c for c, n in enumerate(per_class)])
    return e, torch.repeat_interleave(torch.arange(num_classes), torch.tensor(per_class))


def test_a_class_with_no_more_embeddings_than_dimensions_is_refused_in_one_line():
    embeddings, labels = _class_embeddings([30, 8, 12])  # class 1: N_c = 8 = D
    method = _sampling_method(max_per_class=8)
    fit = method.invariant_map
    method.invariant_map = lambda *args: pytest.fail("the invariant map was fitted before the refusal")
    with pytest.raises(HarnessError) as raised:
        method.sample_embeddings(embeddings, labels, 3)
    method.invariant_map = fit
    message = str(raised.value)
    assert "\n" not in message
    assert "class 1 (class1) has 8 embeddings" in message and "D=8" in message and "(1 of 3 classes" in message
    assert "raise ncis.max_per_class, now 8" in message and "ncis.covariance=shrinkage" in message
    method.sample_embeddings(*_class_embeddings([30, 9, 12]), 3)  # N_c = D + 1 everywhere passes


def test_shrinkage_is_ledoit_wolf_and_samples_below_the_id_first_percentile():
    from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

    from methods.ncis.invariant_sampling import class_covariance, ledoit_wolf

    embeddings, labels = _class_embeddings([6, 5, 7])  # every class N_c < D = 8
    x = embeddings[labels == 1].double()
    expected, expected_shrinkage = sklearn_ledoit_wolf(x.numpy())
    got, shrinkage = ledoit_wolf(x)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-10) and 0 < shrinkage < 1
    assert torch.linalg.matrix_rank(class_covariance(x, 1e-5, "shrinkage")) == 8  # full rank from 5 points
    method = _sampling_method(covariance="shrinkage")
    sampled = method.sample_embeddings(embeddings, labels, 3)
    assert sampled.embeddings.shape == (3, 8, 8) and torch.isfinite(sampled.embeddings).all()
    facts = sampled.facts["log_likelihood"]
    assert set(facts["per_class"]) == {"class0", "class1", "class2"}
    for row in facts["per_class"].values():
        assert row["kept_min"] <= row["kept_p50"] <= row["kept_max"] and row["id_p1"] <= row["id_p5"] <= row["id_p50"]
        assert row["kept_below_id_p1"] == 1.0 and row["kept_max"] < row["id_p1"]
    assert facts["kept_below_id_p1"] == 1.0 and facts["all_kept_below_id_p1"] is True


def test_id_log_likelihoods_are_the_sampling_gaussians():
    from scipy.stats import multivariate_normal

    from methods.ncis.invariant_sampling import class_log_likelihoods, ledoit_wolf

    embeddings, labels = _class_embeddings([40, 30, 20])
    got = class_log_likelihoods(embeddings, labels, 3, 1e-5)
    shrunk = class_log_likelihoods(embeddings, labels, 3, 1e-5, covariance="shrinkage")
    for c in range(3):
        x = embeddings[labels == c].double().numpy()
        sample = multivariate_normal(x.mean(0), np.cov(x.T, bias=True) + 1e-5 * np.eye(8))
        np.testing.assert_allclose(got[labels == c].numpy(), sample.logpdf(x), rtol=1e-9)
        lw = multivariate_normal(x.mean(0), ledoit_wolf(torch.from_numpy(x))[0].numpy() + 1e-5 * np.eye(8))
        np.testing.assert_allclose(shrunk[labels == c].numpy(), lw.logpdf(x), rtol=1e-9)


def test_kept_samples_not_below_the_id_percentile_are_reported_not_hidden():
    from methods.ncis import log_likelihood_facts

    id_ll = torch.arange(100, dtype=torch.float64)  # ID p1 = 0.99
    kept = torch.tensor([-5.0, 0.5, 50.0, -1.0], dtype=torch.float64)
    facts = log_likelihood_facts(id_ll, torch.zeros(100, dtype=torch.long), kept, torch.zeros(4, dtype=torch.long),
                                 ["zero"])
    row = facts["per_class"]["zero"]
    assert row["kept_below_id_p1"] == 0.75 and row["kept_max"] == 50.0 and row["id_p1"] == pytest.approx(0.99)
    assert facts["kept_below_id_p1"] == 0.75 and facts["all_kept_below_id_p1"] is False


# ---------------------------------------------------------------- the baseline classifier's MSP on the outliers

def test_baseline_msp_on_outliers_reuses_the_msp_method_classifier(tmp_path, one_torch_thread):
    from harness.cache import Cache
    from harness.classifier.training import seed_everything
    from harness.contract import Outliers
    from methods.msp import MSP, MSPConfig
    from tests.test_vos_npos import _tiny_context

    cache = Cache(tmp_path / "cache")
    context = _tiny_context(cache)
    seed_everything(0)
    msp = MSP(MSPConfig(), context)
    msp.train(None)
    trained = cache.misses("classifier")
    method = NCIS.__new__(NCIS)
    method.config, method.context = NCISConfig(), context
    gen = torch.Generator().manual_seed(1)
    big = (torch.rand(6, 1, 48, 48, generator=gen) * 255).to(torch.uint8)  # not the ID size: resized to 32
    facts = method.baseline_msp_facts(Outliers("images", big, torch.zeros(6, dtype=torch.long)))
    assert cache.misses("classifier") == trained and facts["classifier"] == msp.classifier.key  # a cache hit
    id_msp = np.exp(msp.score(context.benchmark.test))  # msp scores are log probabilities
    assert facts["id_test"] == {"mean": round(float(id_msp.mean()), 4), "median": round(float(np.median(id_msp)), 4),
                                "above_0.95": round(float((id_msp > 0.95).mean()), 4), "count": 30}
    assert facts["outliers"]["count"] == 6 and 0.0 < facts["outliers"]["mean"] <= 1.0
