"""Diffusion backend on a tiny random SD pipeline: loading, class tokens, per-sample embedding substitution
(equal to the reference code's table overwrite, weights untouched, differentiable), batched generation."""

from __future__ import annotations

import shutil

import pytest
import torch

from harness.diffusion.backend import (
    MODEL_ENV,
    DiffusionBackend,
    GenerationConfig,
    load_backend,
    png_bytes,
    read_png,
    resolve_model_path,
)
from harness.errors import HarnessError

PROMPT = "A high-quality image of a {}"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convolutions: one thread is fastest


def test_missing_directory_and_component_are_named(model_dir, tmp_path, monkeypatch):
    with pytest.raises(HarnessError, match="does not exist"):
        resolve_model_path(tmp_path / "nope")
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial)
    shutil.rmtree(partial / "vae")
    with pytest.raises(HarnessError, match="lacks its vae component"):
        load_backend(partial)
    monkeypatch.delenv(MODEL_ENV, raising=False)
    with pytest.raises(HarnessError, match=MODEL_ENV):
        resolve_model_path(None)
    monkeypatch.setenv(MODEL_ENV, str(model_dir))
    assert resolve_model_path(None) == model_dir.resolve()


def test_class_tokens(backend):
    dog = backend.class_token("dog")
    assert dog.tokens == ("dog</w>",)
    multi = backend.class_token("catdog")  # not a vocabulary word: several BPE pieces, the first is substituted
    assert len(multi.token_ids) > 1 and multi.token_id == multi.token_ids[0]
    with pytest.raises(HarnessError, match="no token"):
        backend.class_token("ééé")


def test_substitution_changes_only_later_positions_and_mutates_nothing(backend):
    before = {k: v.clone() for m in (backend.text_encoder, backend.unet, backend.vae) for k, v in
              m.state_dict().items()}
    token = backend.class_token("dog")
    prompts = [PROMPT.format("dog")] * 2
    stock = backend.encode(prompts)
    vector = torch.randn(1, backend.token_dim).expand(2, -1)
    substituted = backend.encode(prompts, [token.token_id] * 2, vector)
    position = backend.prompt_ids(prompts)[0].tolist().index(token.token_id)
    # the CLIP text encoder is causal: positions before the class word cannot see it, the rest must change
    torch.testing.assert_close(substituted[:, :position], stock[:, :position])
    assert (substituted[:, position:] - stock[:, position:]).abs().amax(-1).min() > 1e-4
    after = {k: v for m in (backend.text_encoder, backend.unet, backend.vae) for k, v in m.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    own_row = backend.token_embedding(token.token_id)[None].expand(2, -1)
    torch.testing.assert_close(backend.encode(prompts, [token.token_id] * 2, own_row), stock)


def test_per_sample_substitution_equals_reference_table_overwrite(backend):
    """The reference code writes e into the shared table row, runs the encoder, restores the row."""
    tokens = [backend.class_token(n).token_id for n in ("dog", "cat", "dog")]
    prompts = [PROMPT.format(n) for n in ("dog", "cat", "dog")]
    vectors = torch.randn(3, backend.token_dim)
    batched = backend.encode(prompts, tokens, vectors)
    table = backend.text_encoder.get_input_embeddings().weight
    for i in range(3):
        saved = table[tokens[i]].clone()
        table.data[tokens[i]] = vectors[i]
        reference = backend.text_encoder(backend.prompt_ids(prompts[i:i + 1])).last_hidden_state
        table.data[tokens[i]] = saved
        torch.testing.assert_close(batched[i:i + 1], reference, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_substituted_vectors(backend):
    token = backend.class_token("bird").token_id
    vectors = torch.randn(2, backend.token_dim, requires_grad=True)
    context = backend.encode([PROMPT.format("bird")] * 2, [token] * 2, vectors)
    latents = torch.randn(2, backend.unet.config.in_channels, 4, 4)
    backend.unet(latents, 10, encoder_hidden_states=context).sample.pow(2).mean().backward()
    assert vectors.grad is not None and torch.isfinite(vectors.grad).all()
    assert (vectors.grad.abs().sum(1) > 0).all()


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
def test_batch_with_per_sample_embeddings_equals_one_at_a_time(backend, scheduler):
    config = GenerationConfig(scheduler=scheduler, steps=4, guidance_scale=3.0, batch_size=8)
    names = ["dog", "cat", "seven"]
    prompts = [PROMPT.format(n) for n in names]
    tokens = [backend.class_token(n).token_id for n in names]
    vectors = torch.randn(3, backend.token_dim)
    seeds = [11, 12, 13]
    with torch.no_grad():
        batched = backend.sample(backend.encode(prompts, tokens, vectors), seeds, config)
        singles = torch.cat([backend.sample(backend.encode(prompts[i:i + 1], tokens[i:i + 1], vectors[i:i + 1]),
                                            seeds[i:i + 1], config) for i in range(3)])
    torch.testing.assert_close(batched, singles, atol=2e-5, rtol=1e-4)
    assert (batched[0] - batched[1]).abs().max() > 1e-3  # different embeddings and seeds give different images


def test_seed_and_resize(backend):
    config = GenerationConfig(steps=2, guidance_scale=2.0, output_size=24, interpolation="nearest")
    first = backend.generate([PROMPT.format("dog")] * 2, [5, 6], config)
    again = backend.generate([PROMPT.format("dog")], [5], config)
    assert first.shape == (2, 3, 24, 24) and first.dtype == torch.uint8
    assert torch.equal(first[:1], again)
    assert not torch.equal(first[0], first[1])


def test_bad_inputs_are_one_line_errors(backend):
    token = backend.class_token("dog").token_id
    with pytest.raises(HarnessError, match=r"expected \(N, 32\)"):
        backend.encode([PROMPT.format("dog")], [token], torch.zeros(1, 7))
    with pytest.raises(HarnessError, match="NaN or infinite"):
        backend.encode([PROMPT.format("dog")], [token], torch.full((1, 32), float("nan")))
    with pytest.raises(HarnessError, match="does not occur"):
        backend.encode([PROMPT.format("cat")], [token], torch.zeros(1, 32))
    with pytest.raises(ValueError, match="guidance_scale"):
        GenerationConfig(guidance_scale=-1)
    with pytest.raises(ValueError, match="steps"):
        GenerationConfig(steps=0)


def test_png_metadata_round_trip(tmp_path):
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(image, {"class": "dog", "embedding_id": 3, "seed": 7}))
    pixels, meta = read_png(path)
    assert torch.equal(pixels, image)
    assert meta == {"class": "dog", "embedding_id": "3", "seed": "7"}


class _TokenizerOnly:
    """The two tokenizer methods of DiffusionBackend over a word tokenizer (no model needed)."""

    def __init__(self, directory, words):
        from transformers import CLIPTokenizer

        from harness.diffusion.tokenizer import write_word_tokenizer

        write_word_tokenizer(words, directory, model_max_length=77)
        self.tokenizer = CLIPTokenizer.from_pretrained(directory, local_files_only=True)
        self.directory = directory

    class_token = DiffusionBackend.class_token
    prompt_ids = DiffusionBackend.prompt_ids


def test_natural_prompt_names_tokenise_as_words_and_labels_with_underscores_do_not(tmp_path):
    from harness.data.spec import load_spec

    spec = load_spec("cifar100")
    vocab = _TokenizerOnly(tmp_path, ["aquarium", "fish", "maple", "tree"])
    for index in (1, 47):  # aquarium_fish, maple_tree
        label, natural = spec.class_names[index], spec.prompt_names[index]
        assert "_" in label and "_" not in natural
        assert any("_" in piece for piece in vocab.class_token(label).tokens)   # CLIP's own "_" token
        assert vocab.class_token(natural).tokens == tuple(f"{w}</w>" for w in natural.split())


def test_token_report_names_multi_token_and_missing_token_classes(tmp_path):
    from harness.data.spec import load_spec
    from harness.diffusion.prompts import token_report

    spec = load_spec("cifar100")
    vocab = _TokenizerOnly(tmp_path, ["chimp", "chimpanzee", "fish", "aquarium", "apples"])
    ncis_tokens = spec.official_prompt_names["ncis_embedding"]
    generation = spec.official_prompt_names["ncis_generation"]
    assert sum(a != b for a, b in zip(ncis_tokens, generation, strict=True)) == 6
    picked = [0, 1, 21]  # apples, (aquarium) fish, chimp(anzee)
    report = token_report(vocab, [ncis_tokens[i] for i in picked], "A high-quality image of the {}",
                          [generation[i] for i in picked])
    assert report.tokens == ("apples</w>", "fish</w>", "chimp</w>")
    assert report.missing == ["chimp"]          # 'chimp</w>' never occurs in "... of the chimpanzee"
    assert report.as_record()["missing_token_classes"] == ["chimp"]
    with pytest.raises(HarnessError, match="'chimp' does not occur"):
        report.require_present("pick other words")
    same = token_report(vocab, ["aquarium fish", "chimpanzee"], "A high-quality image of the {}")
    assert same.missing == [] and same.multi_token == ["aquarium fish"]
    assert same.as_record()["multi_token_classes"] == {"aquarium fish": ["aquarium</w>", "fish</w>"]}
