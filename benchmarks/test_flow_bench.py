"""Flow training step (dual loss, Adam) on 32x32 inputs, with and without the Haar downsampling layer.

Without Haar the AllInOneBlocks split channels, so the comparison uses 2-channel 32x32 inputs (a 1-channel flow
needs Haar). Run: `pytest benchmarks/test_flow_bench.py --benchmark-only`; quote the ratio of the two means.
"""

from __future__ import annotations

import pytest
import torch

from harness.components.flows import Flow, FlowSpec, dual_loss, scale_pixels


@pytest.mark.parametrize("haar", [True, False], ids=["haar", "no-haar"])
def test_flow_training_step(benchmark, haar):
    torch.manual_seed(0)
    flow = Flow(FlowSpec((2, 32, 32), blocks=8, hidden=32, haar=haar))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3, weight_decay=1e-5)
    x = scale_pixels(torch.randint(0, 256, (128, 2, 32, 32), dtype=torch.uint8), torch.Generator().manual_seed(0))

    def step():
        loss = dual_loss(flow, x[:64], x[64:])
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        return loss.total.item()

    assert torch.isfinite(torch.tensor(benchmark.pedantic(step, rounds=5, warmup_rounds=1)))
