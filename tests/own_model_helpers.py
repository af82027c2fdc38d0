"""Users' own classifiers for tests/test_own_model.py, built by factories (`--model tests.own_model_helpers:NAME`)
with fixed random weights, for 1-channel 32 px images and 10 classes."""

import torch
from torch import nn


class OpenOODNet(nn.Module):
    """OpenOOD's convention: `forward(x, return_feature=True)` returns (logits, features); `get_fc()` the head's
    weight and bias as numpy arrays."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor, return_feature: bool = False):
        features = self.body(x)
        logits = self.fc(features)
        return (logits, features) if return_feature else logits

    def get_fc(self):
        return self.fc.weight.detach().cpu().numpy(), self.fc.bias.detach().cpu().numpy()


class PlainNet(nn.Module):
    """No convention: conv features (`pool`, 8-d), a hidden layer (`neck`, `neck_act`, 16-d) and the head (`head`);
    `act` runs twice in one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.act = nn.Conv2d(1, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.neck, self.neck_act, self.head = nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.act(self.conv2(self.act(self.conv1(x)))))
        return self.head(self.neck_act(self.neck(features)))


def seeded(cls: type[nn.Module]) -> nn.Module:
    """`cls()` with weights drawn from seed 0, leaving the global generator as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return cls()


def make_openood_net() -> OpenOODNet:
    return seeded(OpenOODNet)


def make_plain_net() -> PlainNet:
    return seeded(PlainNet)
