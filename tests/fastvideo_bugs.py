"""Porting bugs planted in FastVideo's Waypoint code at run time (its files are never edited), for
the oracle tests in test_fastvideo.py. One FastVideo side runs with one of them:

    python -c "from tests.fastvideo_bugs import main; main()" BUG  run case.toml --side fastvideo ...

- `fp32_head`: the output projection (`unpatchify`) computed in fp32 and rounded to bf16 once: a
  correct, differently rounded port (the control for `velocity_x1.001`).
- `velocity_x1.001`: the same, with the velocity scaled by 1.001 before its one rounding. (Scaling
  the bf16 output instead would change nothing: 1.001 is below half a bf16 ulp, so every element
  rounds back to itself. A port's scale bug matters only where it survives the rounding.)
- `short_local_window`: the local layers' KV cache holds one frame less than the config says.
- `velocity_x1.004`: as `velocity_x1.001`, one bf16 ulp and more (2^-8 = 0.0039): what a steady-gain
  finding must still catch when one side is compiled and the other eager.
- any bug of `tests/test_planted_fastvideo.py`'s `BUGS` by name (e.g. `cache_values_written_as_keys`),
  planted the same way here.
"""

from __future__ import annotations

import sys


def _head(factor: float) -> None:
    import torch.nn.functional as F
    from fastvideo.models.dits import waypoint_transformer as wt

    init = wt.WaypointWorldModel.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        lin = self.unpatchify

        def forward(x):
            bias = None if lin.bias is None or lin.skip_bias_add else lin.bias.float()
            return (F.linear(x.float(), lin.weight.float(), bias) * factor).to(x.dtype), None

        lin.forward = forward

    wt.WaypointWorldModel.__init__ = patched


def _short_local_window() -> None:
    import copy

    from fastvideo.models.dits import waypoint_transformer as wt

    init = wt.WaypointKVCache.__init__

    def patched(self, config, *args, **kwargs):
        shorter = copy.copy(config)
        shorter.local_window = config.local_window - 1
        init(self, shorter, *args, **kwargs)

    wt.WaypointKVCache.__init__ = patched


BUGS = {
    "fp32_head": lambda: _head(1.0),
    "velocity_x1.001": lambda: _head(1.001),
    "velocity_x1.004": lambda: _head(1.004),
    "short_local_window": _short_local_window,
}


def main() -> None:
    bug, argv = sys.argv[1], sys.argv[2:]
    from parity.fastvideo import fastvideo_src_status

    fastvideo_src_status()  # puts FASTVIDEO_SRC on sys.path before the patch imports FastVideo
    if bug in BUGS:
        BUGS[bug]()
    else:
        import pytest

        from tests.test_planted_fastvideo import BUGS as PLANTED, FV

        planted = {b.name: b for b in PLANTED}[bug]
        planted.plant(pytest.MonkeyPatch(), FV())  # kept for the life of this process
    from parity.cli import main as cli

    raise SystemExit(cli(argv))
