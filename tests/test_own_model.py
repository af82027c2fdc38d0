"""Your own classifier (`run --model`, `harness.evaluate`): a timm checkpoint, an OpenOOD-style factory and a
TorchScript file give exactly the numbers the scorers give on the model's own features and logits; the feature
layer, the head and the methods are checked before any work, each problem in one line."""

import hashlib

import numpy as np
import pytest
import timm
import torch

import harness
from harness.cli import main
from harness.components.scores import KNNScorer, ReActScorer, ViMScorer, energy_score, msp_score
from harness.data.benchmarks import load_benchmark
from harness.data.spec import load_spec
from harness.metrics import METRIC_NAMES, accuracy, ood_metrics
from harness.records.results import load_records
from tests.own_model_helpers import make_openood_net
from tests.regress_helpers import TINY_PRESET, write_tiny_spec
from tests.test_hardening import one_line_error

pytestmark = pytest.mark.slow
POST_HOC = "msp,energy,knn,vim,react"
HALF = ["--mean", "0.5", "--std", "0.5"]


@pytest.fixture(autouse=True)
def no_histograms(monkeypatch):
    """The runs draw no score histograms (harness.records.plots, tested elsewhere): they took half of this file's
    time."""
    monkeypatch.setattr("harness.runner.save_score_histograms", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_spec(tmp_path_factory.mktemp("spec"))


@pytest.fixture(scope="module")
def tiny_sets(tiny, session_cache):
    spec = load_spec(str(tiny))
    return load_benchmark(spec, session_cache, None, spec.preset(TINY_PRESET))


def run(tiny, cache, out, *model, methods=POST_HOC):
    return main(["run", "--methods", methods, "--benchmark", str(tiny), "--preset", TINY_PRESET, "--out", str(out),
                 "--cache-dir", str(cache.root), *model])


@pytest.fixture(scope="module")
def timm_net():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1).eval().to(
        memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def openood_records(tiny, session_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("openood")
    assert run(tiny, session_cache, out, "--model", "tests.own_model_helpers:make_openood_net", *HALF) == 0
    return load_records(out, "tiny5k")


@torch.no_grad()
def own_outputs(tiny_sets, forward):
    """(features, logits) of every set, by `forward` on the images in [0, 1] normalised with mean/std 0.5, in
    batches of 500 and channels-last memory, as the harness extracts them (the same arithmetic, to the bit)."""
    sets = {"train": tiny_sets.train, "ID": tiny_sets.test, **tiny_sets.ood}
    outputs = {}
    for name, images in sets.items():
        pairs = [forward(((batch.float() / 255 - 0.5) / 0.5).contiguous(memory_format=torch.channels_last))
                 for batch in images.batches(500)]
        outputs[name] = tuple(torch.cat(part).numpy() for part in zip(*pairs, strict=True))
    return outputs


def scorer(method, config, train, weight, bias):
    """The scores of `method` as a function of (features, logits), fitted on the training `(features, logits)`."""
    if method == "msp":
        return lambda features, logits: msp_score(logits)
    if method == "energy":
        return lambda features, logits: energy_score(logits, config["temperature"])
    if method == "knn":
        knn = KNNScorer(config["k"]).fit(train[0])
        return lambda features, logits: knn.score(features)
    if method == "vim":
        return ViMScorer(config["dim"]).fit(*train, weight, bias).score
    react = ReActScorer(config["percentile"]).fit(train[0], weight, bias)
    return lambda features, logits: react.score(features)


def assert_scorer_numbers(records, outputs, weight, bias, labels):
    """Each record's metrics and accuracy are the scorers' on `outputs` (the model's own features and logits)."""
    weight, bias = np.asarray(weight, dtype=np.float32), np.asarray(bias, dtype=np.float32)
    for record in records:
        score = scorer(record.method, record.config, outputs["train"], weight, bias)
        id_scores = score(*outputs["ID"])
        for name, stored in record.metrics.items():
            expected = ood_metrics(id_scores, score(*outputs[name]), "id", "recall-at-least")
            assert stored == pytest.approx(expected, abs=1e-12), (record.label, name)
        assert record.id_accuracy == accuracy(outputs["ID"][1].argmax(1), labels)
        assert record.classifier_config is None and record.model["normalisation"] == "given"


def test_a_timm_checkpoint_scores_as_the_scorers_do_on_its_features(tiny, tiny_sets, session_cache, timm_net,
                                                                       tmp_path):
    checkpoint = tmp_path / "test_resnet.pth"
    torch.save({"state_dict": timm_net.state_dict(), "epoch": torch.tensor(3)}, checkpoint)
    assert run(tiny, session_cache, tmp_path / "out", "--model", "test_resnet", "--checkpoint", str(checkpoint),
               *HALF) == 0
    records = load_records(tmp_path / "out", "tiny5k")
    assert sorted(r.method for r in records) == sorted(POST_HOC.split(","))

    def forward(x):
        features = timm_net.forward_head(timm_net.forward_features(x), pre_logits=True)
        return features, timm_net.fc(features)

    assert_scorer_numbers(records, own_outputs(tiny_sets, forward), timm_net.fc.weight.detach(),
                          timm_net.fc.bias.detach(), tiny_sets.test.labels.numpy())
    facts = records[0].model
    assert facts["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert (facts["kind"], facts["feature_rule"], facts["linear_layer"]) == ("timm", "timm", "get_classifier()")
    assert (facts["checkpoint"], facts["mean"]) == (str(checkpoint), [0.5])
    assert records[0].label.startswith(f"{records[0].method}(model=test_resnet,preset=tiny,weights=")


def test_an_openood_factory_scores_as_the_scorers_do_on_its_features(openood_records, tiny_sets):
    net = make_openood_net().eval().to(memory_format=torch.channels_last)
    weight, bias = net.get_fc()
    assert sorted(r.method for r in openood_records) == sorted(POST_HOC.split(","))
    assert_scorer_numbers(openood_records, own_outputs(tiny_sets, lambda x: net(x, return_feature=True)[::-1]),
                          weight, bias, tiny_sets.test.labels.numpy())
    facts = openood_records[0].model
    assert (facts["kind"], facts["feature_rule"], facts["linear_layer"]) == ("factory", "openood", "get_fc()")


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_a_torchscript_file_scores_as_the_scorers_do_on_its_features(tiny, tiny_sets, session_cache, timm_net,
                                                                        tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(timm_net), path)
    assert run(tiny, session_cache, tmp_path / "out", "--model", str(path), *HALF, methods="knn,vim") == 0

    def forward(x):
        features = timm_net.forward_head(timm_net.forward_features(x), pre_logits=True)
        return features, timm_net.fc(features)

    records = load_records(tmp_path / "out", "tiny5k")
    assert [r.method for r in records] == ["knn", "vim"]  # the features, and the linear layer found by its weights
    assert_scorer_numbers(records, own_outputs(tiny_sets, forward), timm_net.fc.weight.detach(),
                          timm_net.fc.bias.detach(), tiny_sets.test.labels.numpy())
    facts = records[0].model
    assert (facts["kind"], facts["linear_layer"]) == ("torchscript", "fc")  # no get_classifier: found by its weights
    assert facts["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_feature_layer_finds_the_linear_layer_it_feeds_or_refuses_vim_in_one_line(tiny, session_cache, tmp_path,
                                                                                     capsys):
    plain = ["--model", "tests.own_model_helpers:make_plain_net", *HALF]
    assert run(tiny, session_cache, tmp_path / "fed", *plain, "--feature-layer", "neck_act", methods="vim") == 0
    [record] = load_records(tmp_path / "fed", "tiny5k")
    assert (record.model["feature_rule"], record.model["linear_layer"]) == ("layer:neck_act", "head")
    capsys.readouterr()
    code = run(tiny, session_cache, tmp_path / "hidden", *plain, "--feature-layer", "pool", methods="msp,vim")
    err = capsys.readouterr().err  # after the progress bars of the feature extraction
    assert code == 2 and "Traceback" not in err and [line for line in err.splitlines() if "error" in line] == [
        f"error: no linear layer of {plain[1]} maps its layer:pool features to its logits, and the methods vim and "
        "react need its weights; run msp, energy or knn, or name the layer that feeds the final linear layer "
        "(--feature-layer)"], err
    [record] = load_records(tmp_path / "hidden", "tiny5k")  # msp ran on the model's own logits
    assert record.method == "msp" and record.model["linear_layer"] is None


@pytest.mark.parametrize("model, fragment", [
    (["--model", "tests.own_model_helpers:make_plain_net"], "cannot find the penultimate features"),
    (["--model", "tests.own_model_helpers:make_plain_net", "--feature-layer", "act"], "is ambiguous: it runs 2 times"),
    (["--model", "tests.own_model_helpers:make_plain_net", "--feature-layer", "nope"], "names no submodule"),
])
def test_a_missing_or_ambiguous_feature_layer_is_one_line_naming_the_three_ways(tiny, session_cache, tmp_path,
                                                                                capsys, model, fragment):
    code = run(tiny, session_cache, tmp_path / "out", *model, *HALF)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and fragment in err, err
    for way in ("OpenOOD's forward(x, return_feature=True) and get_fc()", "timm's forward_features, "
                "forward_head(x, pre_logits=True) and get_classifier()", "--feature-layer NAME"):
        assert way in err, err
    assert not (tmp_path / "out").exists()


def test_a_head_of_another_class_count_is_one_line(tiny, session_cache, tmp_path, capsys):
    checkpoint = tmp_path / "five.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=5, in_chans=1).state_dict(), checkpoint)
    code = run(tiny, session_cache, tmp_path / "out", "--model", "test_resnet", "--checkpoint", str(checkpoint), *HALF)
    one_line_error(capsys, code, "has a 5-class head (fc.weight) but tiny5k has 10 classes")


def test_a_method_that_trains_its_own_classifier_is_refused_in_one_line(tiny, session_cache, tmp_path, capsys):
    code = run(tiny, session_cache, tmp_path / "out", "--model", "tests.own_model_helpers:make_openood_net", *HALF,
               methods="msp,vos")
    one_line_error(capsys, code, "method vos trains its own classifier (feature-synthesis)")


def test_evaluate_returns_the_table_of_the_cli_records_and_extracts_features_once(tiny, session_cache,
                                                                                   openood_records):
    stored = set((session_cache.root / "outputs").glob("*.pt"))
    methods = ["msp", "vim"]
    table = harness.evaluate(make_openood_net(), benchmark=str(tiny), methods=methods, mean=[0.5], std=[0.5],
                             preset=TINY_PRESET, cache_dir=session_cache.root)
    assert len(set((session_cache.root / "outputs").glob("*.pt")) - stored) == 7  # train, ID, 5 OOD sets: once
    sets = ["glyphs", "textures", "photos", "faces", "noise", "Average"]
    assert list(table.columns) == ["method", "seed", "set", *METRIC_NAMES, "id_accuracy", "label"]
    assert list(zip(table.method, table.set, strict=True)) == [(m, s) for m in methods for s in sets]
    for record in (r for r in openood_records if r.method in methods):
        rows = table[table.method == record.method].set_index("set")
        for name, metrics in [*record.metrics.items(), ("Average", record.average)]:
            assert rows.loc[name, METRIC_NAMES].to_dict() == metrics, (record.method, name)
        assert set(rows.id_accuracy) == {record.id_accuracy}
        # the same weights (their SHA-256 in the label) as the factory's, named by the module's class
        assert set(rows.label) == {record.label.replace("model=make_openood_net", "model=OpenOODNet")}
