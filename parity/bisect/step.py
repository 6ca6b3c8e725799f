"""The test `git bisect run` calls: tests BISECT_HEAD through the session, exits as git expects.

    python -m parity.bisect.step SESSION.json TERM_OLD TERM_NEW     # cwd: the bisect worktree

Exit 0: the commit behaves like the old endpoint; 1: like the new one; 125: it cannot be tested
(git skips it); 128: a harness error, which stops the bisect.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from parity.errors import UserError

SKIP, ABORT = 125, 128


def main(argv: list[str]) -> int:
    from parity.bisect.git import Repo
    from parity.bisect.session import Session, Terms

    session = Session.load(Path(argv[0]))
    session.log = lambda line: print(line, file=sys.stderr, flush=True)
    terms = Terms(argv[1], argv[2])
    sha = subprocess.run(["git", "rev-parse", "BISECT_HEAD"], capture_output=True, text=True).stdout.strip()
    try:
        row = session.test(Repo(session.repo).commit(sha))
    except UserError as exc:
        print(f"waypoint-parity bisect: error: {exc.one_line()}", file=sys.stderr)
        return ABORT
    if row.status != "tested":
        return SKIP
    return 0 if terms.label(session.criterion.failed(row)) == terms.old else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
