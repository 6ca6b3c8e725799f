"""Benchmark: what the fp32 oracle costs on top of a plain bf16 pair.

    python benchmarks/oracle_cost.py [--size tiny|real] [--device cuda] [--frames 24] [--json out.json]

In one process, on the random-weight checkpoint: a warm-up run (discarded), then side A (upstream,
bf16), side B (upstream with another attention kernel, bf16, A's prompt), A's fp32 oracle
(`parity.oracle.make_oracle`), the comparison without the oracle (fixed bounds) and with it.
Prints each time and the ratios: oracle run / A's run, and the whole oracle cost (its run plus the
extra comparison time) / the plain pair (both runs plus the plain comparison).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from table import print_rows  # benchmarks/ is on sys.path when a benchmark runs as a script


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "real"), default="tiny")
    p.add_argument("--device", default=None)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--checkpoint", type=Path, help="reuse this checkpoint folder")
    p.add_argument("--workdir", type=Path, help="where captures go (default: a temp folder)")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args()

    from parity import oracle
    from parity.capture import Capture
    from parity.case import parse_case
    from parity.compare import compare_captures
    from parity.environment import default_device
    from parity.runner import RunRequest
    from parity.tiny import make_checkpoint
    from reference.runner import ReferenceRunner

    device = args.device or default_device()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wp-oracle-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint or make_checkpoint(work / f"ckpt-{args.size}", size=args.size)
    spec = {"name": "bench", "prompt": "A first-person gameplay video exploring a stylized world.", "seed": 42,
            "frames": args.frames, "controls": {"buttons": [17]}}
    case = parse_case(spec, None)
    runner = ReferenceRunner(ckpt)
    other_kernel = {"sdpa_backend": "math"}

    def timed(fn):
        started = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - started

    timed(lambda: runner.run(RunRequest(parse_case({**spec, "frames": 2}, None), "upstream", work / "warmup", device)))
    a, t_a = timed(lambda: runner.run(RunRequest(case, "upstream", work / "a", device)))
    b, t_b = timed(lambda: runner.run(RunRequest(case, "upstream", work / "b", device, dict(other_kernel), prompt_from=a)))
    o, t_o = timed(lambda: oracle.make_oracle(runner, case, "upstream", a, work / "a.oracle-fp32", device, {}))
    ca, cb, co = Capture.open(a), Capture.open(b), Capture.open(o)
    plain, t_cmp = timed(lambda: compare_captures(ca, cb))
    judged, t_cmp_o = timed(lambda: compare_captures(ca, cb, oracle=co))
    rows = {
        "device": device, "size": args.size, "frames": args.frames,
        "run_a_s": t_a, "run_b_s": t_b, "oracle_run_s": t_o, "compare_s": t_cmp, "compare_with_oracle_s": t_cmp_o,
        "oracle_run_over_a_run": t_o / t_a,
        "oracle_cost_over_plain_pair": (t_o + t_cmp_o - t_cmp) / (t_a + t_b + t_cmp),
        "verdict_fixed_bounds": "PASS" if plain.passed else "FAIL",
        "verdict_oracle": "PASS" if judged.passed else "FAIL",
    }
    print_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
