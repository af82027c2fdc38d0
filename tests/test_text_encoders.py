"""Text encoders: spaCy md mean pooling and ALBERT from a local directory (random weights, built here)."""

import numpy as np
import pytest

from harness.errors import HarnessError
from methods.text_flow.encoders import AlbertConfig, AlbertEncoder, SpacyVectorEncoder
from tests.text_helpers import resource_root, save_random_albert


@pytest.fixture(scope="module")
def spacy_encoder():
    return SpacyVectorEncoder(root=resource_root())


def test_spacy_mean_over_word_tokens_with_vectors(spacy_encoder):
    texts = ["The film was good, really good!", "", ", . !", "qwzzxq blorptastic"]
    out = spacy_encoder.encode(texts)
    assert out.shape == (4, 300) and out.dtype == np.float32
    doc = spacy_encoder.nlp(texts[0])
    expected = np.mean([t.vector for t in doc if t.has_vector and not t.is_punct and not t.is_space], axis=0)
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    assert not np.any(out[1:]) and spacy_encoder.last_empty == 3
    assert spacy_encoder.nlp.pipe_names == []


@pytest.fixture(scope="module")
def albert_dir(tmp_path_factory, one_torch_thread):
    """A tiny random ALBERT with a word-level tokenizer, saved as save_pretrained writes it."""
    words = ["the", "film", "was", "good", "."]
    return save_random_albert(tmp_path_factory.mktemp("albert"), words)


def test_albert_mean_pooling_is_batch_invariant(albert_dir):
    texts = ["the film was good .", "good", "the the the film"]
    full = AlbertEncoder(albert_dir).encode(texts)
    one = AlbertEncoder(albert_dir, AlbertConfig(batch_size=1)).encode(texts)
    assert full.shape == (3, 32)
    np.testing.assert_allclose(full, one, atol=1e-5)  # padding is masked out of the mean


def test_albert_pooler_is_the_models_pooled_output(albert_dir):
    import torch
    from transformers import AlbertModel, AutoTokenizer

    encoder = AlbertEncoder(albert_dir, AlbertConfig(pooling="pooler"))
    out = encoder.encode(["the film was good ."])
    model = AlbertModel.from_pretrained(albert_dir).eval()
    with torch.inference_mode():
        ref = model(**AutoTokenizer.from_pretrained(albert_dir)(["the film was good ."], return_tensors="pt"))
    np.testing.assert_allclose(out, ref.pooler_output.numpy(), atol=1e-6)
    assert not np.allclose(out, AlbertEncoder(albert_dir).encode(["the film was good ."]))


def test_albert_directory_without_weights_is_one_line(tmp_path, albert_dir):
    (tmp_path / "config.json").write_text((albert_dir / "config.json").read_text())
    with pytest.raises(HarnessError, match="no ALBERT model in .*needs config.json and model.safetensors") as err:
        AlbertEncoder(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="pooling"):
        AlbertConfig(pooling="cls")
