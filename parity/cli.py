"""waypoint-parity: prove or disprove numerical parity between Waypoint pipelines, stage by stage.

Typical use:

    waypoint-parity parity                          # every case in cases/: upstream vs script (+ FastVideo)
    waypoint-parity run cases/seed-official.toml --side upstream -o reports/a
    waypoint-parity run cases/seed-official.toml --side script --prompt-from reports/a -o reports/b
    waypoint-parity compare reports/a reports/b     # config diff, stage table, first divergence
    waypoint-parity report reports/a reports/b -o reports/ab   # HTML report: open reports/ab/index.html
    waypoint-parity make-checkpoint /tmp/tiny --hf-cache
    waypoint-parity bisect case.toml --repo ~/FastVideo --walk A..B   # which FastVideo commit changed parity

The model defaults to the built-in tiny random-weight checkpoint; `--snapshot` takes a folder or a
Hugging Face repo id found offline in the cache (its code runs only with --trust-remote-code).
Bad inputs end with one line on stderr and exit code 2; `--check` makes a divergence exit 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from parity.errors import EXIT_USER_ERROR, UserError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        import os

        from parity.fastvideo.logs import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"  # also for spawned workers
    started = time.perf_counter()
    try:
        code = args.handler(args)
    except UserError as exc:
        print(f"waypoint-parity: error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("waypoint-parity: interrupted; finished frames are on disk, the capture is marked incomplete", file=sys.stderr)
        return 130
    verdict = getattr(args, "verdict", None)
    if verdict is not None:
        command = " ".join(argv if argv is not None else sys.argv[1:])
        print(f"{verdict} | {time.perf_counter() - started:.1f} s | waypoint-parity {command}")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="waypoint-parity", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("parity", help="run cases against every pair of sides and compare (what `make parity` runs)")
    p.add_argument("cases", nargs="*", type=Path, help="case files or folders (default: cases/)")
    _model_args(p)
    p.add_argument("--out-root", type=Path, default=Path("reports"), help="a new parity-<time> folder is made here")
    p.add_argument("--check", action="store_true", help="exit 1 when any comparison fails")
    p.add_argument("--shard", metavar="I/N", help="run shard I of N of the cases (sorted by name, every N-th from the I-th); "
                   "join the shards' run folders with `merge`")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run cases in N processes, one case each at a time; with cuda, worker k uses cuda:(k mod GPUs)")
    p.add_argument("--no-oracle", action="store_true",
                   help="judge pairs with a bf16/fp16 side by fixed dtype bounds instead of against A's fp32 oracle")
    p.set_defaults(handler=cmd_parity)

    p = sub.add_parser("merge", help="merge run folders (shards of a CI matrix) into one run folder with one index")
    p.add_argument("out", type=Path, help="new run folder (must not exist, or be empty)")
    p.add_argument("runs", type=Path, nargs="+", help="run folders, each with index.json (parity-<time>/)")
    p.set_defaults(handler=cmd_merge)

    p = sub.add_parser("run", help="run one side of one case and write its capture")
    p.add_argument("case", type=Path)
    p.add_argument("--side", default="upstream", choices=("upstream", "script", "fastvideo"))
    p.add_argument("-o", "--out", type=Path, required=True, help="capture folder to create (must not exist)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="override a reference option, e.g. --option sigmas=[1.0,0.949,0.84,0.0] (repeatable)")
    p.add_argument("--prompt-from", type=Path, help="inject the prompt embedding of this capture (shared prompt)")
    p.add_argument("--capture", default="full", metavar="POLICY",
                   help="full (default), every:K (per-step tensors on every K-th frame only, for long rollouts), "
                        "or none (bare run, for benchmarks); add ,kv:digest (KV-cache statistics instead of full keys "
                        "and values, for real-size models) or ,kv:off; recorded in the manifest")
    p.add_argument("--resume", action="store_true", help="continue the incomplete capture in --out (reference sides only)")
    p.add_argument("--max-capture-bytes", metavar="SIZE",
                   help="refuse to start a capture estimated above SIZE (2000000000, 500MB, 2GiB; see parity.budget)")
    _model_args(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("compare", help="compare two captures: config diff, per-stage verdicts, first divergence")
    p.add_argument("a", type=Path, help="reference capture (A)")
    p.add_argument("b", type=Path, help="candidate capture (B)")
    p.add_argument("-o", "--out", type=Path, help="write summary.json and stages.csv here (must not hold another comparison)")
    p.add_argument("--case", type=Path, help="take tolerances from this case file (default: those recorded in A)")
    p.add_argument("--floors", type=Path, help="calibrated floors.json (`calibrate`): a stage fails above 4x its floor")
    p.add_argument("--check", action="store_true", help="exit 1 when the comparison fails")
    _oracle_args(p)
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("report", help="write the HTML report of two captures: overview, stage pages, blur evidence, video")
    p.add_argument("a", type=Path, help="reference capture (A)")
    p.add_argument("b", type=Path, help="candidate capture (B)")
    p.add_argument("-o", "--out", type=Path, help="report folder (default: reports/report-<A>__vs__<B>); "
                   "must not hold the report of another comparison")
    p.add_argument("--case", type=Path, help="take tolerances from this case file (default: those recorded in A)")
    p.add_argument("--floors", type=Path, help="calibrated floors.json (`calibrate`): a stage fails above 4x its floor")
    p.add_argument("--check", action="store_true", help="exit 1 when the comparison fails")
    p.add_argument("--attribution", type=Path, metavar="PATH/attribution.json",
                   help="an `ablate` result: its page is copied into the report, its answer shown on the overview")
    p.add_argument("--diagnosis", type=Path, metavar="PATH/diagnosis.json",
                   help="a `diagnose` result: its page is copied into the report, its growth verdict shown on the overview")
    _oracle_args(p)
    p.set_defaults(handler=cmd_report)

    from parity.diagnose.commands import add_commands

    add_commands(sub, _model_args)

    from parity.bisect.commands import add_commands as add_bisect

    add_bisect(sub, _model_args)

    p = sub.add_parser("verify", help="check a stored capture: manifest, every tensor's sha256, shape and dtype, frame count")
    p.add_argument("run", type=Path, help="capture folder")
    p.set_defaults(handler=cmd_verify)

    p = sub.add_parser("make-checkpoint", help="write the tiny random-weight checkpoint (Overworld snapshot layout)")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hf-cache", action="store_true", help="lay it out as a Hugging Face cache (models--Org--Name/...)")
    p.add_argument("--repo-id", default="Overworld/Waypoint-1-Small")
    p.add_argument("--arch", choices=("tiny", "waypoint"), default="tiny",
                   help="tiny: the built-in stand-in model; waypoint: the real Waypoint classes (world_engine's or "
                        "FastVideo's, found at run time) at a tiny size, written as DIR/overworld and DIR/fastvideo")
    p.add_argument("--size", choices=("tiny", "real"), default="tiny",
                   help="tiny (default), or real: Waypoint-1-Small's transformer dimensions with random bf16 weights (~5 GB), for timings")
    p.add_argument("--device", help="--arch waypoint: where the weights are built and drawn (cuda: seconds at the real size; default cpu)")
    p.set_defaults(handler=cmd_make_checkpoint)
    return parser


VERBOSE_HELP = ("show FastVideo's own log output on the console (default: it goes to fastvideo.log in the "
                "FastVideo run folder)")


def _oracle_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("oracle (pairs with a bf16/fp16 side)")
    g.add_argument("--oracle", type=Path, metavar="DIR",
                   help="the fp32 oracle capture of A (default: A.oracle-fp32 beside A, made there from A's manifest if missing)")
    g.add_argument("--no-oracle", action="store_true", help="judge by fixed dtype bounds instead of against an oracle")
    g.add_argument("--trust-remote-code", action="store_true", help="allow A's snapshot code to run when the oracle is made")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    g = p.add_argument_group("model")
    g.add_argument("--snapshot", help="Overworld snapshot folder or repo id (default: the built-in tiny checkpoint)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the snapshot's own Python files to run")
    g.add_argument("--text-encoder", help="UMT5 folder or repo id when the snapshot has no text_encoder/ (default google/umt5-xl)")
    g.add_argument("--hf-cache-dir", help="Hugging Face cache to look repo ids up in (default: HF_HUB_CACHE)")
    g.add_argument("--fastvideo-bundle", help="FastVideo-layout bundle folder or repo id for the FastVideo side")
    g.add_argument("--code-source", choices=("snapshot", "world_engine"), default="snapshot",
                   help="reference sides: model/KV cache/VAE code from the snapshot's .py files or from world_engine "
                        "(WORLD_ENGINE_SRC or installed)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: $DEVICE, else cuda when available)")


def cmd_run(args) -> int:
    from parity.capture import CapturePolicy
    from parity.case import load_case
    from parity.runner import RunRequest
    from parity.suite import SideConfig
    from reference.options import parse_cli_override

    case = load_case(args.case)
    CapturePolicy.parse(args.capture)  # a bad policy fails before anything loads
    overrides = dict(parse_cli_override(text) for text in args.option)
    if args.resume and args.side == "fastvideo":
        raise UserError("--resume applies to reference sides (upstream, script) only")
    sides = SideConfig.from_args(args)
    out = sides.runner(args.side).run(RunRequest(case, args.side, args.out, sides.device, overrides, args.prompt_from,
                                                      resume=args.resume, max_capture_bytes=args.max_capture_bytes,
                                                      capture=args.capture))
    print(f"capture written: {out}")
    return 0


def _tolerances(args, a):
    """The case's tolerances (--case, else those recorded in capture A), with --floors applied."""
    from parity.case import load_case
    from parity.tolerances import parse_tolerances

    if args.case:
        tolerances = load_case(args.case).tolerances
    else:
        try:
            tolerances = parse_tolerances(a.manifest.get("case", {}).get("tolerances", {}))
        except ValueError as exc:
            raise UserError(f"recorded tolerances are invalid: {exc}", args.a / "manifest.json") from None
    if getattr(args, "floors", None):
        from parity.diagnose.calibrate import FLOOR_MULTIPLE, Floors

        tolerances = tolerances.with_floors(Floors.load(args.floors).floors, FLOOR_MULTIPLE)
    return tolerances


def _oracle(args, a, b):
    """The oracle capture to judge A vs B against, or None (see parity.oracle)."""
    from parity import oracle
    from parity.capture import Capture

    if args.oracle and args.no_oracle:
        raise UserError("--oracle and --no-oracle exclude each other")
    if args.oracle:
        found = Capture.open(args.oracle)
        oracle.check_oracle(found, a)
        return found
    if args.no_oracle or not oracle.needs_oracle(a, b):
        return None
    if not oracle.can_make_oracle(a):
        print("no fp32 oracle: A is not a reference-runner capture; fixed dtype bounds apply")
        return None
    path = oracle.default_location(a.run_dir)
    if not (path / "manifest.json").is_file():
        print(f"making the fp32 oracle of A (once; reused by later comparisons): {path}")
    try:
        return Capture.open(oracle.oracle_for(a, path, trust_remote_code=args.trust_remote_code))
    except UserError as exc:  # a stored capture stays comparable: by fixed bounds, and the console says why
        print(f"no fp32 oracle ({exc.one_line()}); fixed dtype bounds apply. Pass --oracle DIR, or --no-oracle to silence this")
        return None


def cmd_compare(args) -> int:
    from parity.capture import Capture
    from parity.compare import compare_captures
    from parity.output import SUMMARY, console, print_result, write_outputs

    a, b = Capture.open(args.a), Capture.open(args.b)
    tolerances = _tolerances(args, a)
    if args.out and (args.out / SUMMARY).exists():
        raise UserError("already holds a comparison; choose another --out", args.out)
    result = compare_captures(a, b, tolerances, oracle=_oracle(args, a, b))
    print_result(result, console())
    if args.out:
        paths = write_outputs(result, args.out)
        print(f"summary: {paths['summary']}")
    args.verdict = "PARITY" if result.passed else "DIVERGED"
    return 1 if args.check and not result.passed else 0


def cmd_report(args) -> int:
    from parity.capture import Capture
    from parity.compare import compare_captures
    from parity.report import write_report

    a, b = Capture.open(args.a), Capture.open(args.b)
    result = compare_captures(a, b, _tolerances(args, a), oracle=_oracle(args, a, b))
    out = args.out or Path("reports") / f"report-{a.name}__vs__{b.name}"
    started = time.perf_counter()
    index = write_report(result, out, attribution=args.attribution, diagnosis=args.diagnosis)
    print(f"report written in {time.perf_counter() - started:.1f} s: {index}")
    args.verdict = "PARITY" if result.passed else "DIVERGED"
    return 1 if args.check and not result.passed else 0


def cmd_parity(args) -> int:
    from datetime import datetime

    from parity.case import load_case
    from parity.output import console as make_console
    from parity.output import print_result
    from parity.report import write_report, write_run_index
    from parity.suite import CaseRunner, SideConfig, default_pairs, new_run_folder, write_index

    from parity.shard import parse_shard, select_shard

    shard = parse_shard(args.shard) if args.shard else None
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    files = _case_files(args.cases or [Path("cases")])
    cases = [load_case(f) for f in files]  # every case is validated before anything runs
    if shard:
        cases = select_shard(cases, shard, lambda c: c.name)
    sides = SideConfig.from_args(args)
    pairs_default, fastvideo_note = default_pairs(sides.fastvideo_bundle, sides.snapshot)
    notes = []
    if fastvideo_note:
        notes.append(f"FastVideo side skipped: {fastvideo_note}")
    out_root = new_run_folder(args.out_root, datetime.now().strftime("%Y%m%d-%H%M%S"))
    console = make_console()
    console.print(f"model: {sides.snapshot} on {sides.device}")
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    if args.workers > 1:
        return _parity_parallel(args, cases, sides, pairs_default, notes, out_root, console)
    runner = CaseRunner(sides, out_root, log=console.print, oracle=not args.no_oracle)
    outcomes, reports, report_s = [], [], 0.0
    html_index = out_root / "index.html"
    for case in cases:
        console.rule(f"case {case.name}")
        for outcome in runner.run_case(case, case.pairs or pairs_default):
            print_result(outcome.result, console, title=f"{case.name}: {outcome.pair.a} (A) vs {outcome.pair.b} (B)")
            outcomes.append(outcome)
            started = time.perf_counter()
            reports.append(write_report(outcome.result, outcome.out_dir, run_index=html_index))
            report_s += time.perf_counter() - started
    index = write_index(out_root, outcomes, notes)
    write_run_index(out_root, [{"case": o.case.name, "pair": o.pair.name, "result": o.result, "report": r}
                               for o, r in zip(outcomes, reports)], notes)
    _print_overview(console, outcomes, out_root)
    console.print(f"results: {out_root}  (index: {index}; HTML reports written in {report_s:.1f} s)")
    print(f"report: {html_index}")  # plain print: a rich console would wrap a long path
    passed = sum(o.result.passed for o in outcomes)
    args.verdict = f"{'PARITY' if passed == len(outcomes) else 'DIVERGED'}: {passed} of {len(outcomes)} comparisons within tolerance"
    return 1 if args.check and passed != len(outcomes) else 0


def _parity_parallel(args, cases, sides, pairs, notes, out_root: Path, console) -> int:
    from parity.merge import write_run
    from parity.shard import run_cases_parallel

    entries = run_cases_parallel(cases, sides, pairs, out_root, args.workers, log=console.print, oracle=not args.no_oracle)
    index, html_index = write_run(out_root, entries, notes)
    console.print(f"results: {out_root}  (index: {index})")
    print(f"report: {html_index}")
    passed = sum(e["verdict"] == "PASS" for e in entries)
    args.verdict = f"{'PARITY' if passed == len(entries) else 'DIVERGED'}: {passed} of {len(entries)} comparisons within tolerance"
    return 1 if args.check and passed != len(entries) else 0


def cmd_merge(args) -> int:
    from parity.merge import merge_runs

    index, html_index = merge_runs(args.out, args.runs)
    print(f"merged {len(args.runs)} runs: {index}")
    print(f"report: {html_index}")
    return 0


def _print_overview(console, outcomes, out_root: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="parity overview")
    for col in ("case", "pair", "verdict", "first divergent frame", "first value divergence", "summary"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        fv = o.result.first_value_divergence
        table.add_row(o.case.name, o.pair.name, "[green]PASS[/]" if o.result.passed else "[red]FAIL[/]",
                      "-" if fv is None else str(fv.key.frame), escape(fv.key.where()) if fv else "-",
                      str((o.out_dir / "summary.json").relative_to(out_root)))
    console.print(table)


def _case_files(paths: list[Path]) -> list[Path]:
    files = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.glob("*.toml"))
            if not found:
                raise UserError("no *.toml case files in this folder", p)
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError("case file or folder not found", p)
    return files


def cmd_verify(args) -> int:
    from parity.capture import Capture
    from parity.verify import verify_capture

    print(verify_capture(Capture.open(args.run)))
    return 0


def cmd_make_checkpoint(args) -> int:
    if args.arch == "waypoint":
        from parity.tiny.waypoint_arch import make_waypoint_checkpoint

        paths = make_waypoint_checkpoint(args.dir, seed=args.seed, size=args.size, device=args.device or "cpu")
        print(f"{args.size} real-architecture checkpoint written: snapshot {paths['snapshot']}, FastVideo bundle {paths['bundle']}")
        print(f"use it with --snapshot {paths['snapshot']} --code-source world_engine --fastvideo-bundle {paths['bundle']}")
        return 0
    from parity.tiny import make_checkpoint

    path = make_checkpoint(args.dir, seed=args.seed, hf_cache=args.hf_cache, repo_id=args.repo_id, size=args.size)
    print(f"{args.size} random-weight checkpoint written: {path}")
    if args.hf_cache:
        print(f"use it offline with HF_HUB_CACHE={args.dir} and --snapshot {args.repo_id}")
    return 0
