"""Compute with the harness's portable kernels, chosen before anything loads torch (as `python -m harness` does), so
the expectations written by `python -m harness regress --update` hold exactly."""

import os

from harness.numerics import DEFAULT_MODE, MODE_ENV, select_kernels

select_kernels(os.environ.get(MODE_ENV) or DEFAULT_MODE)
