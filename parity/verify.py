"""Full validation of a stored capture: the manifest, then every tensor against its recorded sha256,
shape and dtype, then the frame count. `waypoint-parity verify RUN` prints the returned line;
the first problem is a UserError naming the file.

    line = verify_capture(Capture.open(run_dir))   # "OK: ... 112 tensors in 4 files match ..."
"""

from __future__ import annotations

from parity.capture import MANIFEST, Capture
from parity.errors import UserError


def verify_capture(cap: Capture) -> str:
    files = set()
    keys = cap.keys()
    for key in keys:
        info = cap.info(key)
        t = cap.tensor(key)  # unreadable file or sha256 mismatch: UserError naming the file
        dtype = str(t.dtype).removeprefix("torch.")
        if list(t.shape) != list(info["shape"]) or dtype != info["dtype"]:
            raise UserError(f"stage {key.id} is {dtype} {list(t.shape)} in the file but {info['dtype']} {info['shape']} in the manifest",
                            cap.run_dir / info["file"])
        files.add(info["file"])
    written = int(cap.manifest.get("frames_written", 0))
    frames = {k.frame for k in keys if k.frame is not None}
    if frames != set(range(written)):
        missing = sorted(set(range(written)) - frames)
        detail = f"frame {missing[0]} has no tensors" if missing else f"frame {max(frames)} is beyond frames_written"
        raise UserError(f"frames_written is {written} but {detail}", cap.run_dir / MANIFEST)
    state = "complete" if cap.complete else "INCOMPLETE"
    return f"OK: {cap.run_dir}: {len(keys)} tensors in {len(files)} files match their sha256 ({state}, {written} frames)"
