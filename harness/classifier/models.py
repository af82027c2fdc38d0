"""Backbones and the classifier wrapper every classifier-based method shares.

A `Classifier` takes images in [0, 1] (N, C, H, W), normalises them with the benchmark's mean/std, and exposes the
penultimate features (`features`) and the linear head (`fc`) separately: post-hoc scores (ViM, ReAct, kNN) and
feature-space synthesis (VOS, NPOS) need both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import HarnessError


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with a 3x3 stride-1 stem and no max-pool (the CIFAR variant used by VOS/NPOS/Dream-OOD/NCIS).

    `blocks=(3, 4, 6, 3), width=64` is the papers' CIFAR ResNet-34; the embedded benchmark uses a narrow,
    shallow member of the same family. Output: globally average-pooled features of size 8 * width.
    """

    def __init__(self, blocks: Sequence[int], width: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for stage, count in enumerate(blocks):
            planes = width * 2 ** stage
            for i in range(count):
                layers.append(BasicBlock(in_planes, planes, stride=2 if stage > 0 and i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


class WideBasic(nn.Module):
    """Pre-activation wide-ResNet block (BN-ReLU-conv twice, 1x1 conv shortcut when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-widen (Zagoruyko & Komodakis 2016) as in the Outlier-Exposure/energy-OOD CIFAR code: 16-channel
    3x3 stem, three groups of (depth - 4) / 6 blocks of widths 16k, 32k, 64k, final BN-ReLU, global average pool.
    WRN-40-2 gives 128-d features. No dropout (the OOD papers train with drop rate 0)."""

    def __init__(self, depth: int, widen: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        count, widths = (depth - 4) // 6, (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, in_planes = [], widths[0]
        for group, planes in enumerate(widths[1:]):
            for i in range(count):
                layers.append(WideBasic(in_planes, planes, 2 if group > 0 and i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


class LeNet(nn.Module):
    """OpenOOD's LeNet for MNIST: conv 6-16-120 (5x5, ReLU, 2x2 max-pool after the first two) and fc 120 -> 84 with
    ReLU, 84-d features; no normalisation layer. OpenOOD feeds 28 px images to a first conv padded by 2; any input
    up to 32 px is zero-padded to 32 (after normalisation, as that padding is), so 32 px images run unpadded."""

    size = 32

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(16, 120, 5), nn.ReLU())
        self.fc = nn.Linear(120, 84)
        self.out_dim = 84

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height > self.size or width > self.size:
            raise HarnessError(f"lenet takes images up to {self.size} px, got {height}x{width}; use a resnet backbone")
        top, left = (self.size - height) // 2, (self.size - width) // 2
        x = F.pad(x, (left, self.size - width - left, top, self.size - height - top))
        return F.relu(self.fc(torch.flatten(self.convs(x), 1)))


class TimmBackbone(nn.Module):
    """A timm model without its classifier head (`num_classes=0`): the ImageNet-style ResNet-34 (7x7 stride-2 stem,
    max-pool) used for ImageNet-100, 512-d pooled features."""

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        import timm

        self.net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
        self.out_dim = self.net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


BackboneFactory = Callable[[int], nn.Module]
BACKBONES: dict[str, BackboneFactory] = {
    "lenet": LeNet,
    "resnet_small": lambda in_channels: CifarResNet((1, 1, 1, 1), 16, in_channels),
    "resnet18_cifar": lambda in_channels: CifarResNet((2, 2, 2, 2), 64, in_channels),
    "resnet34_cifar": lambda in_channels: CifarResNet((3, 4, 6, 3), 64, in_channels),
    "wrn40_2": lambda in_channels: WideResNet(40, 2, in_channels),
    "resnet34_timm": lambda in_channels: TimmBackbone("resnet34", in_channels),
}


class Classifier(nn.Module):
    """Normalisation + backbone (penultimate features) + linear head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(feature_dim, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def feature_dim(self) -> int:
        return self.fc.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images in [0, 1]."""
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def load_backbone_checkpoint(net: nn.Module, path: str) -> None:
    """Initialise `net` from a local checkpoint (a state dict, or a dict holding one under `state_dict`/`model`;
    torchvision and timm ResNet key names both work). Classifier-head weights (`fc.*`) are ignored: the head is
    trained for the benchmark's classes. Missing backbone weights are an error."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise HarnessError(f"classifier.pretrained checkpoint {file} does not exist; pass a local .pth/.safetensors "
                           "file (nothing is downloaded)")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the user's to replace)
        raise HarnessError(f"cannot read checkpoint {file} ({type(err).__name__}); pass a torch state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    target = net.net if isinstance(net, TimmBackbone) else net
    try:
        missing, _unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise HarnessError(f"checkpoint {file} does not fit this backbone ({str(err).splitlines()[-1].strip()[:120]})"
                           "; pass a checkpoint of the same architecture") from None
    if missing:
        raise HarnessError(f"checkpoint {file} lacks {len(missing)} backbone weights (e.g. {missing[0]}); it does "
                           "not match this backbone")


def build_classifier(backbone: str, in_channels: int, num_classes: int, mean: Sequence[float],
                     std: Sequence[float], pretrained: str = "") -> Classifier:
    if backbone not in BACKBONES:
        raise HarnessError(f"unknown backbone {backbone!r}; choose one of {', '.join(sorted(BACKBONES))}")
    net = BACKBONES[backbone](in_channels)
    if pretrained:
        load_backbone_checkpoint(net, pretrained)
    return Classifier(net, net.out_dim, num_classes, mean, std)
