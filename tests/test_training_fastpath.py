"""The classifier fast path: batched augmentation equals the per-image definition, file-backed and in-memory
training sets give the same model, bf16 autocast runs on any device."""

import numpy as np
import torch
from PIL import Image

from harness.classifier.augment import augment, random_resized_crop
from harness.classifier.models import build_classifier
from harness.classifier.training import ClassifierConfig, extract_outputs, train_classifier
from harness.data.sets import FileImageSet, ImageSet

torch.set_num_threads(2)


def test_batched_crop_and_flip_equal_the_per_image_definition():
    images = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8)
    out = augment(images, 2, True, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    dy, dx = torch.randint(0, 5, (24,), generator=g), torch.randint(0, 5, (24,), generator=g)
    flip = torch.rand(24, generator=g) < 0.5
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(24):
        crop = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        assert np.array_equal(out[i].numpy(), crop[..., ::-1] if flip[i] else crop)
    assert flip.any() and not flip.all() and (dy != 2).any()


def test_random_resized_crop_of_the_whole_image_is_the_identity_and_keeps_the_size():
    images = torch.rand(4, 3, 16, 16)
    same = random_resized_crop(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    crops = random_resized_crop(images, torch.Generator().manual_seed(0))
    assert crops.shape == images.shape and not torch.allclose(crops, images)


def test_file_backed_and_in_memory_training_sets_give_the_same_model(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    files = []
    for i, image in enumerate(pixels):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(files[-1])
    labels = torch.from_numpy(rng.integers(0, 3, 40))
    on_disk = FileImageSet("train", tuple(files), 16, 3, preprocess="none", labels=labels)
    in_memory = ImageSet("train", torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()), labels)
    assert torch.equal(on_disk.gather(torch.arange(40)), in_memory.images)
    config = ClassifierConfig(backbone="resnet_small", epochs=1, batch_size=16, crop_padding=2)
    models = []
    for data in (on_disk, in_memory):
        torch.manual_seed(0)  # the same initial weights
        model = build_classifier("resnet_small", 3, 3, [0.5] * 3, [0.25] * 3)
        models.append(train_classifier(model, data, config, torch.device("cpu"), seed=3))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    outputs = [extract_outputs(models[0], data, torch.device("cpu"), batch_size=16) for data in (on_disk, in_memory)]
    np.testing.assert_allclose(outputs[0]["logits"], outputs[1]["logits"], rtol=1e-5, atol=1e-5)


def test_bf16_autocast_trains_and_extracts_on_cpu():
    data = ImageSet("train", torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8), torch.arange(32) % 4)
    config = ClassifierConfig(backbone="resnet_small", epochs=1, batch_size=16, precision="bf16")
    model = train_classifier(build_classifier("resnet_small", 3, 4, [0.5] * 3, [0.25] * 3), data, config,
                             torch.device("cpu"), seed=0)
    out = extract_outputs(model, data, torch.device("cpu"), batch_size=16, precision="bf16")
    assert out["logits"].dtype == np.float32 and np.isfinite(out["logits"]).all()
    assert next(model.parameters()).dtype == torch.float32
