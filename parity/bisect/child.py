"""One commit, tested in a process of its own (FastVideo can be imported only once per process).

    python -m parity.bisect.child SPEC.json ROW.json

SPEC.json (written by `parity.bisect.session`) names the program, the checkout, the case, the
upstream capture; ROW.json receives the `CommitRow`. A commit the program
cannot test is a row with status `skipped` and the reason; exit status 0 either way. A harness
error (bad upstream capture, bad case) exits 2 with its one line on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from parity.errors import EXIT_USER_ERROR, UserError


def main(argv: list[str]) -> int:
    spec_path, row_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    from parity.bisect.outcome import SKIPPED, CommitRow, commit_row
    from parity.bisect.programs import ProgramRun, Untestable, load_program

    started = time.perf_counter()
    run = ProgramRun(**{**spec["run"], **{k: Path(spec["run"][k]) for k in ("checkout", "case_path", "out_dir", "upstream")}})
    commit, subject = spec["commit"], spec["subject"]
    try:
        program = load_program(spec["program"])
        try:
            capture = program.run(run)
        except Untestable as exc:
            row = CommitRow(commit, subject, SKIPPED, reason=str(exc))
        else:
            from parity.capture import Capture
            from parity.case import load_case
            from parity.compare import compare_captures

            case = load_case(run.case_path)
            result = compare_captures(Capture.open(run.upstream), Capture.open(capture), case.tolerances)
            row = commit_row(commit, subject, result)
            row.capture = str(capture)
    except UserError as exc:
        print(f"waypoint-parity bisect: error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    row.notes = run.notes
    row.seconds = round(time.perf_counter() - started, 1)
    row_path.write_text(json.dumps(row.to_dict(), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
