from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest

from harness.config import build_config, content_hash, parse_set_options
from harness.errors import HarnessError


@dataclass(frozen=True)
class Example:
    k: int = 5
    lr: float = 0.1
    flag: bool = False
    mode: Literal["paper", "reference"] = "paper"
    dim: int | None = None
    sizes: tuple[int, ...] = (1, 2)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1 (got {self.k})")


def test_strings_are_coerced_to_declared_types():
    cfg = build_config(Example, {"k": "7", "lr": "1e-3", "flag": "true", "mode": "reference", "dim": "none",
                                 "sizes": "3,4"}, "ex")
    assert cfg == Example(k=7, lr=1e-3, flag=True, mode="reference", dim=None, sizes=(3, 4))
    assert build_config(Example, {"dim": "12"}, "ex").dim == 12


@pytest.mark.parametrize("overrides, message", [
    ({"kk": "1"}, "unknown setting ex.kk; valid settings are: ex.k, ex.lr"),
    ({"k": "seven"}, "ex.k='seven' is not an integer"),
    ({"lr": "fast"}, "ex.lr='fast' is not a number"),
    ({"flag": "maybe"}, "not a boolean"),
    ({"mode": "other"}, "choose one of paper, reference"),
    ({"k": "0"}, "ex: k must be >= 1"),
])
def test_bad_overrides_give_one_line_errors(overrides, message):
    with pytest.raises(HarnessError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        build_config(Example, overrides, "ex")
    assert "\n" not in str(err.value)


@dataclass(frozen=True)
class Renamed:
    renamed: ClassVar[dict[str, str]] = {"lam": "covariance_ridge"}
    covariance_ridge: float = 1e-5


def test_a_renamed_field_keeps_its_old_spelling():
    assert build_config(Renamed, {"lam": "0.5"}, "ex") == Renamed(0.5)
    assert build_config(Renamed, {"covariance_ridge": "0.5"}, "ex") == Renamed(0.5)
    with pytest.raises(HarnessError, match=r"ex.lam is the old name of ex.covariance_ridge and both are set; "
                                           r"set only ex.covariance_ridge$") as err:
        build_config(Renamed, {"lam": "0.5", "covariance_ridge": "0.5"}, "ex")
    assert "\n" not in str(err.value)
    with pytest.raises(HarnessError, match="valid settings are: ex.covariance_ridge$"):
        build_config(Renamed, {"ridge": "1"}, "ex")


def test_parse_set_options_groups_by_scope():
    assert parse_set_options(["knn.k=100", "classifier.epochs=3", "knn.x=a=b"]) == {
        "knn": {"k": "100", "x": "a=b"}, "classifier": {"epochs": "3"}}
    for bad in ("knn", "k=1", ".k=1", "knn.=1"):
        with pytest.raises(HarnessError, match="malformed"):
            parse_set_options([bad])


def test_content_hash_is_stable_and_sensitive():
    assert content_hash(Example(), 1) == content_hash(Example(), 1)
    assert content_hash(Example(), 1) != content_hash(Example(k=6), 1)
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})
