"""maxlogit holds the numbers in its own expectations file, written by
`python -m harness regress --methods maxlogit --benchmark mnist5k --preset quick --threads 1 --expectations
tests/expectations.json --update`."""

from pathlib import Path

from harness.testing import assert_within_tolerance

EXPECTATIONS = Path(__file__).with_name("expectations.json")


def test_maxlogit_holds_its_expectations(tmp_path):
    assert_within_tolerance("maxlogit", benchmark="mnist5k", preset="quick", expectations=EXPECTATIONS,
                            out_dir=tmp_path)
