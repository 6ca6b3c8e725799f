"""The `bisect` subcommand (wired into `parity.cli`).

    waypoint-parity bisect CASE --repo ~/FastVideo --good GOOD --bad BAD        # first bad commit
    waypoint-parity bisect CASE --repo ~/FastVideo --bad BAD                    # good: first commit with the Waypoint pipeline
    waypoint-parity bisect CASE --repo ~/FastVideo --good HEAD --bad OLD --stage step.sigma   # bad is older: the fixing commit
    waypoint-parity bisect CASE --repo ~/FastVideo --walk A..B [--every N]      # every commit of A..B, one table
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from parity.errors import UserError


def add_commands(sub, model_args) -> None:
    p = sub.add_parser("bisect", help="which FastVideo commit changed parity: git bisect run with the harness as the test, "
                                      "or --walk A..B for a table of every commit")
    p.add_argument("case", type=Path)
    p.add_argument("--repo", type=Path, default=os.environ.get("FASTVIDEO_SRC"),
                   help="git checkout of FastVideo (default: $FASTVIDEO_SRC); only read, never checked out")
    p.add_argument("--good", help="a commit that is good (default: the first commit where the program's pipeline exists)")
    p.add_argument("--bad", help="a commit that is bad; when it is older than --good, bisect looks for the commit that fixed it")
    p.add_argument("--walk", metavar="A..B", help="test A and every commit of A..B instead of bisecting")
    p.add_argument("--every", type=int, default=1, metavar="N", help="--walk: every Nth commit (the last is always tested)")
    p.add_argument("--all-parents", action="store_true",
                   help="follow merged branches too (default: first parent, so a merge of main counts as one step)")
    p.add_argument("--stage", help="bad means: this stage family (step.sigma) or stage (f3/step0.velocity) diverges "
                                   "(default: any divergence)")
    p.add_argument("--program", default="fastvideo",
                   help="what runs a commit: fastvideo (default), reference-options, or module:function (see parity.bisect.programs)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="option override for every tested commit's side, e.g. --option precision=fp32 (repeatable)")
    p.add_argument("--upstream-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option override for the upstream capture, e.g. --upstream-option model_dtype=float32 (repeatable)")
    p.add_argument("--upstream", type=Path, metavar="CAPTURE", help="reuse this upstream capture instead of making one")
    p.add_argument("--out-root", type=Path, default=Path("reports"))
    model_args(p)
    p.set_defaults(handler=cmd_bisect)


def cmd_bisect(args) -> int:
    from parity.bisect.git import Repo
    from parity.bisect.outcome import Criterion
    from parity.bisect.programs import load_program
    from parity.bisect.report import bisect_summary, print_table, table, write_bisect, write_walk
    from parity.bisect.session import Session, Settings, bisect, walk, walk_commits
    from parity.case import load_case
    from parity.output import console as make_console
    from parity.suite import SideConfig, new_run_folder
    from reference.options import parse_cli_override

    if args.repo is None:
        raise UserError("bisect needs --repo (a git checkout of FastVideo) or FASTVIDEO_SRC")
    repo = Repo.open(args.repo)
    if args.walk and (args.good or args.bad):
        raise UserError("--walk tests a range; leave out --good/--bad")
    if not args.walk and not args.bad:
        raise UserError("bisect needs --bad (and --good, or the first commit with the pipeline is taken), or --walk A..B")
    if args.walk:
        walk_commits(repo, args.walk, args.every, not args.all_parents)  # a bad range fails before anything runs
    else:
        for rev in (args.good, args.bad):
            if rev:
                repo.resolve(rev)
    load_program(args.program)
    Criterion.parse(args.stage)
    case = load_case(args.case)
    options = dict(parse_cli_override(t) for t in args.option)
    upstream_options = dict(parse_cli_override(t) for t in args.upstream_option)
    sides = SideConfig.from_args(args)
    settings = Settings(device=sides.device, snapshot=_absolute(sides.snapshot), fastvideo_bundle=_absolute(sides.fastvideo_bundle),
                        code_source=sides.code_source, trust_remote_code=sides.trust_remote_code, options=options)
    kind = "walk" if args.walk else "bisect"
    out = new_run_folder(args.out_root, f"{kind}-{case.name}-" + datetime.now().strftime("%Y%m%d-%H%M%S"))
    console = make_console()
    session = Session.create(repo, args.program, args.case, out, settings, args.stage, upstream=args.upstream,
                             upstream_options=upstream_options, log=lambda s: console.print(s, markup=False, highlight=False))
    meta = {"repo": str(repo.path), "program": args.program, "case": str(args.case), "criterion": session.criterion.describe(),
            "upstream": str(session.upstream), "settings": vars(settings)}
    if args.walk:
        rows = walk(session, args.walk, args.every, not args.all_parents)
        paths = write_walk(out, rows, {**meta, "range": args.walk, "first_parent": not args.all_parents, "every": args.every})
        print_table(table(rows), console, f"{args.walk}: {len(rows)} commits against upstream")
        skipped = [r for r in rows if r.status != "tested"]
        if skipped:
            console.print(f"skipped {len(skipped)}: " + "; ".join(f"{r.short} ({r.reason})" for r in skipped), markup=False)
        args.verdict = f"WALKED: {len(rows) - len(skipped)} of {len(rows)} commits tested"
    else:
        result = bisect(session, args.good, args.bad)
        order = {sha: i for i, sha in enumerate(c.sha for c in [result.old] + repo.commits(result.old.sha, result.new.sha, True))}
        paths = write_bisect(out, result, {**meta, "order": order})
        print_table(table(sorted(result.rows, key=lambda r: order.get(r.commit, 0))), console, "tested commits")
        for line in bisect_summary(result):
            console.print(line, markup=False, highlight=False)
        args.verdict = (f"FOUND: {result.first.short} {result.first.subject}" if result.first
                        else f"OPEN: {len(result.candidates)} candidates (skipped commits)")
    print(f"table: {paths['md']}")
    print(f"page: {paths['html']}")  # plain print: rich would wrap a long path
    return 0


def _absolute(spec) -> str | None:
    """A folder given relative to here, made absolute (each commit runs in another folder); a repo id as it is."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else str(spec)
