"""The diagnosis subcommands: `diagnose`, `ablate`, `calibrate` (wired into `parity.cli`).

    waypoint-parity diagnose cases/seed-official.toml --b script     # local vs cumulative error, drill-down
    waypoint-parity ablate cases/seed-official.toml                  # which known difference blurs, ranked
    waypoint-parity calibrate cases/seed-official.toml               # noise floors -> floors.json
    waypoint-parity compare A B --floors reports/calibrate-.../floors.json
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from parity.errors import UserError


def add_commands(sub, model_args) -> None:
    p = sub.add_parser("diagnose", help="teacher forcing (local vs cumulative error per stage) and drill-down of the first divergent call")
    p.add_argument("case", type=Path)
    p.add_argument("--a", default="upstream", choices=("upstream", "script", "fastvideo"), help="reference side (default upstream)")
    p.add_argument("--b", default="script", choices=("upstream", "script", "fastvideo"), help="target side (default script)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="option override for B, e.g. --option precision=fp32 with --b fastvideo (repeatable)")
    p.add_argument("--a-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option override for A, e.g. --a-option model_dtype=float32 (repeatable)")
    p.add_argument("--out-root", type=Path, default=Path("reports"))
    model_args(p)
    p.set_defaults(handler=cmd_diagnose)

    p = sub.add_parser("drill", help="rerun one divergent model call of two captures with hooks on every submodule; name the first divergent one")
    p.add_argument("a", type=Path, help="reference capture (A, reference runner)")
    p.add_argument("b", type=Path, help="candidate capture (B, reference or FastVideo runner)")
    p.add_argument("--stage", help="model call to drill into, e.g. f0/step0.velocity (default: the first value divergence)")
    p.add_argument("--json", type=Path, help="write the drill-down as JSON here")
    p.add_argument("--trust-remote-code", action="store_true", help="allow snapshot code to run (snapshot-code captures)")
    p.add_argument("--device", help="cpu, cuda (default: $DEVICE, else cuda when available)")
    p.set_defaults(handler=cmd_drill)

    p = sub.add_parser("ablate", help="apply each known difference alone and stacked on the reference; rank by detail lost")
    p.add_argument("case", type=Path)
    p.add_argument("--only", help="comma-separated ablation names (default: all known)")
    p.add_argument("--order", help="comma-separated order for the cumulative pass (default: as listed)")
    p.add_argument("--from-summary", type=Path, help="also ablate every difference in this comparison's summary.json config diff")
    p.add_argument("--out-root", type=Path, default=Path("reports"))
    model_args(p)
    p.set_defaults(handler=cmd_ablate)

    p = sub.add_parser("calibrate", help="noise floors of a side against itself under harmless perturbations")
    p.add_argument("case", type=Path)
    p.add_argument("--side", default="upstream", choices=("upstream", "script"))
    p.add_argument("--devices", default="", help="extra devices to compare against, e.g. cuda (comma-separated)")
    p.add_argument("--out-root", type=Path, default=Path("reports"))
    model_args(p)
    p.set_defaults(handler=cmd_calibrate)


def _setup(args, kind: str):
    from parity.case import load_case
    from parity.output import console
    from parity.suite import SideConfig
    from parity.suite import new_run_folder

    case = load_case(args.case)
    sides = SideConfig.from_args(args)
    out = new_run_folder(args.out_root, f"{kind}-{case.name}-" + datetime.now().strftime("%Y%m%d-%H%M%S"))
    return case, sides, out, console()


def cmd_diagnose(args) -> int:
    from rich.table import Table

    from parity.capture import Capture
    from parity.compare import compare_captures
    from parity.diagnose.teacher import error_growth
    from parity.runner import RunRequest

    from reference.options import parse_cli_override

    a_options = dict(parse_cli_override(t) for t in args.a_option)
    b_options = dict(parse_cli_override(t) for t in args.option)
    case, sides, out, console = _setup(args, "diagnose")
    if args.a == "fastvideo":
        raise UserError("--a is the reference the target is forced with; FastVideo can be the target (--b fastvideo) only")
    timings = {}

    def timed(label, fn):
        t = time.perf_counter()
        value = fn()
        timings[label] = time.perf_counter() - t
        return value

    a = timed("plain run (A)", lambda: sides.runner(args.a).run(RunRequest(case, args.a, out / "a", sides.device, a_options)))
    b = timed("free run (B)", lambda: sides.runner(args.b).run(
        RunRequest(case, args.b, out / "b-free", sides.device, b_options, prompt_from=a)))
    forced_request = RunRequest(case, args.b, out / "b-teacher-forced", sides.device, b_options, prompt_from=a, teacher=a)
    if args.b == "fastvideo":
        from parity.diagnose.fastvideo_teacher import run_teacher_forced

        forced = timed("teacher-forced run (B)", lambda: run_teacher_forced(sides.runner("fastvideo"), forced_request))
    else:
        forced = timed("teacher-forced run (B)", lambda: sides.runner(args.b).run(forced_request))
    local = compare_captures(Capture.open(a), Capture.open(forced), case.tolerances)
    free = compare_captures(Capture.open(a), Capture.open(b), case.tolerances)
    growth = error_growth(local, free)

    table = Table(title=f"{case.name}: {args.b} vs {args.a}, per frame (final latent rel_l2)")
    for col in ("frame", "local", "cumulative", "amplification"):
        table.add_column(col, justify="right")
    for g in growth.frames:
        table.add_row(str(g.frame), f"{g.local:.3g}", f"{g.cumulative:.3g}", f"{g.amplification:.3g}")
    console.print(table)
    console.print(f"error growth: [bold]{growth.verdict}[/]")
    first_local = local.first_value_divergence
    console.print(f"first local divergence: {first_local.explain() if first_local else 'none'}")

    from parity.diagnose.drilldown import drill_down, first_model_call_divergence

    drill = None
    fv = free.first_value_divergence
    target = first_model_call_divergence(local) or first_model_call_divergence(free)
    if target is not None and target.key.family in ("step.velocity", "step.update", "cache_pass.output"):

        drill = timed("drill-down", lambda: drill_down(target.key, a, forced, args.trust_remote_code, sides.device))
        name = drill.first.name_a if drill.first else "none beyond its floor"
        console.print(f"drill-down of {target.key.where()}: first divergent submodule: [bold]{name}[/]"
                      + (f" (rel_l2 {drill.first.rel_l2:.3g}, floor {drill.first.floor:.3g})" if drill.first else ""))
    base = timings["plain run (A)"]
    cost = {k: round(v / base, 2) for k, v in timings.items()}
    console.print("cost relative to a plain run: " + ", ".join(f"{k} {v}x" for k, v in cost.items()))
    (out / "diagnosis.json").write_text(json.dumps({
        "case": case.name, "a": args.a, "b": args.b, "growth": growth.to_dict(),
        "first_local_divergence": first_local.explain() if first_local else None,
        "first_cumulative_divergence": fv.explain() if fv else None,
        "drill_down": drill.to_dict() if drill else None,
        "timings_s": timings, "cost_vs_plain_run": cost,
        "captures": {"a": str(a), "b_free": str(b), "b_teacher_forced": str(forced)},
    }, indent=1, default=str))
    console.print(f"diagnosis: {out / 'diagnosis.json'}")
    from parity.report.diagnosis import write_diagnosis_page

    print(f"diagnosis page: {write_diagnosis_page(out / 'diagnosis.json')}")  # plain print: rich would wrap a long path
    return 0


def cmd_drill(args) -> int:
    from parity.capture import Capture
    from parity.output import console as make_console
    from parity.compare import compare_captures
    from parity.diagnose.drilldown import drill_down, first_model_call_divergence, parse_stage
    from parity.environment import default_device

    stage = parse_stage(args.stage) if args.stage else None  # a bad id fails before anything loads
    for path in (args.a, args.b):
        if not (path / "manifest.json").is_file():
            raise UserError("not a capture (no manifest.json)", path)
    console = make_console()
    if stage is None:
        first = first_model_call_divergence(compare_captures(Capture.open(args.a), Capture.open(args.b)))
        if first is None:
            console.print("no model call diverges between the captures; nothing to drill into (pass --stage)")
            return 0
        stage = parse_stage(first.key.id)
    started = time.perf_counter()
    drill = drill_down(stage, args.a, args.b, args.trust_remote_code, args.device or default_device())
    elapsed = time.perf_counter() - started
    worst = max(drill.modules, key=lambda m: m.rel_l2 / m.floor if m.floor else m.rel_l2, default=None)
    if drill.first:
        f = drill.first
        console.print(f"{stage.id}: first divergent submodule [bold]{f.name_a}[/] (B: {f.name_b}, {f.matched_by}) "
                      f"rel_l2 {f.rel_l2:.3g} max_abs {f.max_abs:.3g} floor {f.floor:.3g}")
    else:
        console.print(f"{stage.id}: no submodule beyond its floor"
                      + (f" (closest: {worst.name_a} rel_l2 {worst.rel_l2:.3g}, floor {worst.floor:.3g})" if worst else ""))
    console.print(f"{len(drill.modules)} modules matched, unmatched A {len(drill.unmatched_a)}, B {len(drill.unmatched_b)}; "
                  f"{drill.calls} forward calls per side; {elapsed:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(drill.to_dict(), indent=1))
        console.print(f"drill-down: {args.json}")
    return 0


def cmd_ablate(args) -> int:
    from rich.table import Table

    from parity.diagnose.ablation import KNOWN, ablations_from_summary, attribute

    case, sides, out, console = _setup(args, "ablate")
    ablations = KNOWN
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        known = {a.name: a for a in KNOWN}
        missing = [n for n in names if n not in known]
        if missing:
            raise UserError(f"--only: unknown ablation {missing[0]!r}; known: {', '.join(known)}")
        ablations = tuple(known[n] for n in names)
    if args.from_summary:
        extra, notes = ablations_from_summary(args.from_summary)
        ablations = ablations + extra
        for note in notes:
            console.print(f"[yellow]{note}[/]")
    order = [n.strip() for n in args.order.split(",")] if args.order else None
    started = time.perf_counter()
    table = attribute(case, lambda req: sides.runner("upstream").run(req), out, ablations, order, sides.device, log=console.print)
    elapsed = time.perf_counter() - started
    view = Table(title=f"{case.name}: which difference costs detail (ranked by blur = 1 - sharpness ratio)")
    for col in ("rank", "ablation", "blur", "sharpness B/A", "PSNR", "SSIM", "latent rel-L2", "cumulative blur"):
        view.add_column(col, justify="left" if col == "ablation" else "right")
    for r in table.ranked():
        e, c = r.alone, r.cumulative
        view.add_row(str(r.rank), r.ablation.name, f"{e.blur:+.3f}", f"{e.sharpness_ratio:.3f}", f"{e.psnr:.1f}", f"{e.ssim:.3f}",
                     f"{e.latent_rel_l2:.3g}", f"{c.blur:+.3f}" if c else "-")
    console.print(view)
    runs = 1 + 2 * len(ablations)
    console.print(f"{runs} runs in {elapsed:.1f} s; attribution: {out / 'attribution.json'}")
    from parity.report.diagnosis import attribution_answer, write_attribution_page

    page = write_attribution_page(out / "attribution.json")
    console.print(attribution_answer(table.to_dict()).text, markup=False)
    print(f"attribution page: {page}")  # plain print: rich would wrap a long path
    return 0


def cmd_calibrate(args) -> int:
    from rich.table import Table

    from parity.diagnose.calibrate import FLOOR_MULTIPLE, calibrate

    case, sides, out, console = _setup(args, "calibrate")
    devices = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    floors = calibrate(case, lambda req: sides.runner(args.side).run(req), out, args.side, sides.device,
                       extra_devices=devices, log=console.print)
    view = Table(title=f"noise floors of {args.side} on {sides.device} (a stage fails above {FLOOR_MULTIPLE:g}x its floor)")
    for col in ("family", "rel_l2 floor", "max_abs floor", "from"):
        view.add_column(col)
    for family, tol in floors.floors.items():
        view.add_row(family, f"{tol.rel_l2:.3g}", f"{tol.max_abs:.3g}", floors.provenance["floor_from"].get(family, "-"))
    console.print(view)
    if floors.nondeterministic:
        console.print(f"[yellow]nondeterministic stages (excluded)[/]: {', '.join(floors.nondeterministic[:10])}")
    console.print(f"floors: {out / 'floors.json'}")
    return 0
