"""Damaged or instrumented copies of the tiny checkpoint, for the bad-input and crash-safety tests.

`hooked_copy` appends a hook to transformer/model.py that misbehaves on request, read from
$WAYPOINT_TEST_HOOK at call time, `<action>@<frame>:<call>` (call 1 is step 0 of that frame):
    kill@2:2    SIGKILL this process in the middle of frame 2 (its second model call)
    nan@1:2     return a velocity with NaN at (0, 0, 3, 4, 5) and Inf at (0, 0, 7, 1, 1)
    shape@0:1   return a velocity missing its last column
    raise@1:1   raise RuntimeError("hook: boom")
Without the variable the copy computes exactly what the original does (its code differs, so it
needs --trust-remote-code).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HOOK_ENV = "WAYPOINT_TEST_HOOK"

HOOK = '''

# --- test hook (tests/snapshot_copies.py) ---
import os as _os
import signal as _signal

_original_forward = WorldModel.forward
_calls = {}


def _hooked_forward(self, *args, **kwargs):
    frame = int(kwargs["frame_timestamp"].reshape(-1)[0])
    _calls[frame] = _calls.get(frame, 0) + 1
    action, _, at = _os.environ.get("WAYPOINT_TEST_HOOK", "").partition("@")
    hit = at == f"{frame}:{_calls[frame]}"
    if hit and action == "kill":
        _os.kill(_os.getpid(), _signal.SIGKILL)
    if hit and action == "raise":
        raise RuntimeError("hook: boom")
    v = _original_forward(self, *args, **kwargs)
    if hit and action == "nan":
        v = v.clone()
        v[0, 0, 3, 4, 5] = float("nan")
        v[0, 0, 7, 1, 1] = float("inf")
    if hit and action == "shape":
        v = v[..., :-1]
    return v


WorldModel.forward = _hooked_forward
'''


def copy_of(tiny_checkpoint: Path, dest: Path) -> Path:
    shutil.copytree(tiny_checkpoint, dest)
    return dest


def hooked_copy(tiny_checkpoint: Path, dest: Path) -> Path:
    copy_of(tiny_checkpoint, dest)
    with open(dest / "transformer" / "model.py", "a") as fh:
        fh.write(HOOK)
    return dest


def edit_config(snapshot: Path, **changes) -> Path:
    """Set (value) or delete (None) keys of transformer/config.json."""
    path = snapshot / "transformer" / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    return snapshot


def edit_weights(snapshot: Path, folder: str, edit) -> Path:
    """`edit(state_dict)` on the folder's safetensors file, saved back in place."""
    from safetensors.torch import load_file, save_file

    (path,) = (snapshot / folder).glob("*.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, str(path))
    return snapshot
