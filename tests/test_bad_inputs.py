"""Every bad input in one table: the exact one-line message, exit code 2, nothing on disk changed.

Each row builds its input under tmp_path (a damaged snapshot copy, a case file, a tampered capture),
hashes the whole folder, runs the command line, and checks stderr is exactly
`waypoint-parity: error: <message>\n`, the exit code 2, and the folder byte-for-byte unchanged (no
file added, removed or modified). Rows in `tests/test_cli.py` and `tests/test_case.py` are not repeated.
Model failures during a run (NaN/Inf, a wrong-shaped velocity, an exception) are below the table:
there the finished frames are kept, so the run folder is new, but nothing that existed changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from parity.cli import main
from tests.conftest import SMALL_CASE
from tests.snapshot_copies import HOOK_ENV, copy_of, edit_config, edit_weights, hooked_copy

CONFIG = "transformer/config.json"
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def stored_capture(tiny_checkpoint, tmp_path_factory) -> Path:
    """A finished 2-frame upstream capture of the tiny model, copied by the rows that need one."""
    root = tmp_path_factory.mktemp("stored")
    case = root / "two.toml"
    case.write_text(SMALL_CASE.replace("frames = 3", "frames = 2"))
    assert main(["run", str(case), "--snapshot", str(tiny_checkpoint), "-o", str(root / "cap"), "--device", "cpu"]) == 0
    return root / "cap"


@dataclass
class Ctx:
    tmp: Path
    ckpt: Path
    stored: Path

    @property
    def case(self) -> Path:
        path = self.tmp / "case.toml"
        if not path.exists():
            path.write_text(SMALL_CASE)
        return path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def snap(self) -> Path:
        return copy_of(self.ckpt, self.tmp / "snap")

    def capture(self, name="B") -> Path:
        return Path(shutil.copytree(self.stored, self.tmp / name))

    def run(self, snapshot=None, *extra) -> list:
        return ["run", self.case, "--snapshot", snapshot or self.ckpt, "-o", self.out, "--device", "cpu", *extra]

    def run_case(self, text: str) -> list:
        path = self.tmp / "bad.toml"
        path.write_text(text)
        return ["run", path, "--snapshot", self.ckpt, "-o", self.out, "--device", "cpu"]

    def manifest(self, capture: Path, edit: Callable[[dict], None]) -> Path:
        data = json.loads((capture / "manifest.json").read_text())
        edit(data)
        (capture / "manifest.json").write_text(json.dumps(data))
        return capture


@dataclass
class Bad:
    id: str
    make: Callable[[Ctx], list]
    message: str
    """Formatted with S (snapshot copy), B (capture copy), out, tmp, case."""


def _rm(path: Path) -> Path:
    path.unlink()
    return path


def _pickle_only(c: Ctx) -> list:
    s = c.snap()
    _rm(s / WEIGHTS)
    (s / "transformer" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle; it must never be opened
    return c.run(s)


def _truncated(c: Ctx) -> list:
    s = c.snap()
    data = (s / WEIGHTS).read_bytes()
    (s / WEIGHTS).write_bytes(data[: len(data) // 2])
    return c.run(s)


def _duplicate_weights(c: Ctx) -> list:
    from safetensors.torch import save_file

    s = c.snap()
    save_file({"final_norm.weight": torch.ones(64)}, str(s / "transformer" / "extra.safetensors"))
    return c.run(s)


def _shape_lie(d: dict) -> None:
    d["tensors"]["f0/noise"]["shape"] = [1, 1, 16, 32, 31]


def _tamper(c: Ctx) -> Path:
    from safetensors.torch import load_file, save_file

    b = c.capture()
    state = load_file(b / "frames" / "000000.safetensors")
    state["noise"] = state["noise"] + 1
    save_file(state, str(b / "frames" / "000000.safetensors"))
    return b


def _drop_from_file(c: Ctx) -> list:
    from safetensors.torch import load_file, save_file

    b = c.capture()
    state = load_file(b / "frames" / "000000.safetensors")
    del state["latent"]
    save_file(state, str(b / "frames" / "000000.safetensors"))
    return ["compare", c.stored, b]


def _comparison_there(c: Ctx) -> list:
    (c.tmp / "cmp").mkdir()
    (c.tmp / "cmp" / "summary.json").write_text('{"verdict": "PASS"}')
    return ["compare", c.stored, c.stored, "-o", c.tmp / "cmp"]


def _disk_full(c: Ctx, monkeypatch) -> list:
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("parity.budget.shutil.disk_usage", lambda path: usage(10**9, 10**9 - 101 * 2**20, 101 * 2**20))
    return c.run()


CASE_HEAD = "prompt = 'p'\nseed = 1\nframes = 2\n"
BUDGET = "the capture needs about 3.0 MB for 3 frames x 4 steps (974.7 KB per frame)"

BAD = [
    # -- snapshots: missing, partial, pickled, damaged -----------------------------------------------
    Bad("snapshot-is-a-file", lambda c: c.run((c.tmp / "snap.txt").write_text("x") and c.tmp / "snap.txt"),
        "{tmp}/snap.txt: snapshot path is not a folder"),
    Bad("snapshot-empty-folder", lambda c: c.run((c.tmp / "snap").mkdir() or c.tmp / "snap"),
        "{S}: incomplete snapshot: transformer/config.json is missing"),
    Bad("snapshot-without-model-code", lambda c: c.run(_rm(c.snap() / "transformer/model.py").parents[1]),
        "{S}: incomplete snapshot: transformer/model.py is missing"),
    Bad("snapshot-without-vae-config", lambda c: c.run(_rm(c.snap() / "vae/config.json").parents[1]),
        "{S}: incomplete snapshot: vae/config.json is missing"),
    Bad("snapshot-pickled-weights-only", _pickle_only,
        "{S}: transformer/ holds only pickled weights (pytorch_model.bin); waypoint-parity loads safetensors only, "
        "since unpickling can run arbitrary code: convert them to safetensors first"),
    Bad("snapshot-without-vae-weights", lambda c: c.run(_rm(c.snap() / "vae/diffusion_pytorch_model.safetensors").parents[1]),
        "{S}: incomplete snapshot: no vae/*.safetensors (pickled weights are not loaded)"),
    Bad("config-not-json", lambda c: c.run((s := c.snap()) and (s / CONFIG).write_text("{oops") and s),
        "{S}/transformer/config.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    Bad("config-without-scheduler-sigmas", lambda c: c.run(edit_config(c.snap(), scheduler_sigmas=None)),
        "{S}/transformer/config.json: config has no scheduler_sigmas and the upstream profile has no fallback; "
        "add scheduler_sigmas or pass --option sigmas=[...]"),
    Bad("config-sigmas-not-a-list", lambda c: c.run(edit_config(c.snap(), scheduler_sigmas="karras")),
        "{S}/transformer/config.json: scheduler_sigmas must be a list of numbers, got 'karras'"),
    Bad("config-sigmas-not-ending-at-zero", lambda c: c.run(edit_config(c.snap(), scheduler_sigmas=[1.0, 0.5])),
        "{S}/transformer/config.json: scheduler_sigmas must start in (0, 1] and end at 0, got [1.0, 0.5]"),
    Bad("config-sigmas-single-value", lambda c: c.run(edit_config(c.snap(), scheduler_sigmas=[0.0])),
        "{S}/transformer/config.json: scheduler_sigmas needs at least two values, got [0.0]"),
    Bad("config-height-not-divisible-by-patch", lambda c: c.run(edit_config(c.snap(), height=33)),
        "{S}/transformer/config.json: latent height x width 33 x 32 is not divisible by patch [2, 2]"),
    Bad("config-zero-channels", lambda c: c.run(edit_config(c.snap(), channels=0)),
        "{S}/transformer/config.json: channels must be a positive integer (the latent shape is (1, 1, channels, height, width)), got 0"),
    Bad("config-channels-unlike-weights", lambda c: c.run(edit_config(c.snap(), channels=8)),
        "{S}/transformer: transformer weights do not load strictly: 4 shape-mismatched (patch_in.weight, patch_out.bias, patch_out.weight (+1 more))"),
    Bad("config-fewer-buttons-than-controls", lambda c: c.run(edit_config(c.snap(), n_buttons=128)),
        "{S}/transformer/config.json: n_buttons is 128, but the control protocol sends 256 button values per frame"),
    Bad("weights-truncated", _truncated,
        "{S}/transformer/diffusion_pytorch_model.safetensors: cannot read weights (SafetensorError: Error while deserializing header: "
        "incomplete metadata, file not fully covered)"),
    Bad("weights-garbage", lambda c: c.run((s := c.snap()) and (s / "vae/diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64) and s),
        "{S}/vae/diffusion_pytorch_model.safetensors: cannot read weights (SafetensorError: Error while deserializing header: "
        "invalid JSON in header: EOF while parsing a value at line 1 column 0)"),
    Bad("weights-missing-key", lambda c: c.run(edit_weights(c.snap(), "transformer", lambda st: st.pop("final_norm.weight"))),
        "{S}/transformer: transformer weights do not load strictly: 1 missing (final_norm.weight)"),
    Bad("weights-wrong-shape", lambda c: c.run(edit_weights(c.snap(), "transformer", lambda st: st.update({"mouse_in.weight": torch.zeros(64, 3)}))),
        "{S}/transformer: transformer weights do not load strictly: 1 shape-mismatched (mouse_in.weight)"),
    Bad("vae-weights-unexpected-key", lambda c: c.run(edit_weights(c.snap(), "vae", lambda st: st.update({"decoder.extra": torch.zeros(1)}))),
        "{S}/vae: VAE weights do not load strictly: 1 unexpected (decoder.extra)"),
    Bad("weights-key-in-two-files", _duplicate_weights,
        "{S}/transformer/extra.safetensors: tensor 'final_norm.weight' appears in more than one weight file"),
    Bad("vae-auto-map-path-traversal", lambda c: c.run((s := c.snap()) and _set_json(s / "vae/config.json", auto_map={"AutoModel": "../../evil.VAE"})),
        "{S}/vae/config.json: auto_map module '../../evil' is not a plain file name"),
    # -- case files ------------------------------------------------------------------------------
    Bad("case-unknown-pair-key", lambda c: c.run_case(CASE_HEAD + "[[pairs]]\na = 'upstream'\nb = 'script'\ncolour = 1"),
        "{tmp}/bad.toml: pairs[0].colour: unknown key; allowed keys are a, b, a_options, b_options"),
    Bad("case-unknown-segment-key", lambda c: c.run_case(CASE_HEAD + "[[controls.segments]]\nframes = [0, 1]\njump = true"),
        "{tmp}/bad.toml: controls.segments[0].jump: unknown key; allowed keys are buttons, frames, mouse, scroll"),
    Bad("case-prompt-not-a-string", lambda c: c.run_case("prompt = 5\nseed = 1\nframes = 2"),
        "{tmp}/bad.toml: prompt: must be a string, got int"),
    Bad("case-seed-negative", lambda c: c.run_case("prompt = 'p'\nseed = -1\nframes = 2"),
        "{tmp}/bad.toml: seed: must be an integer in [0, 2^63), got -1"),
    Bad("case-seed-boolean", lambda c: c.run_case("prompt = 'p'\nseed = true\nframes = 2"),
        "{tmp}/bad.toml: seed: must be an integer in [0, 2^63), got True"),
    Bad("case-zero-frames", lambda c: c.run_case("prompt = 'p'\nseed = 1\nframes = 0"),
        "{tmp}/bad.toml: frames: must be a positive integer, got 0"),
    Bad("case-too-many-frames", lambda c: c.run_case("prompt = 'p'\nseed = 1\nframes = 100001"),
        "{tmp}/bad.toml: frames: 100001 is more than the 100000 this harness accepts"),
    Bad("case-button-negative", lambda c: c.run_case(CASE_HEAD + "[controls]\nbuttons = [-1]"),
        "{tmp}/bad.toml: controls.buttons: key id -1 is outside [0, 256)"),
    Bad("case-segment-button-256", lambda c: c.run_case(CASE_HEAD + "[[controls.segments]]\nframes = [0, 1]\nbuttons = [256]"),
        "{tmp}/bad.toml: controls.segments[0].buttons: key id 256 is outside [0, 256)"),
    Bad("case-button-not-an-integer", lambda c: c.run_case(CASE_HEAD + "[controls]\nbuttons = [true]"),
        "{tmp}/bad.toml: controls.buttons: must be a list of integer key ids"),
    Bad("case-scroll-a-string", lambda c: c.run_case(CASE_HEAD + "[controls]\nscroll = 'up'"),
        "{tmp}/bad.toml: controls.scroll: must be a finite number (the wheel value)"),
    Bad("case-controls-not-a-table", lambda c: c.run_case(CASE_HEAD.replace("frames = 2\n", "frames = 2\ncontrols = 3\n")),
        "{tmp}/bad.toml: controls: must be a table"),
    Bad("case-options-to-fastvideo", lambda c: c.run_case(CASE_HEAD + "[[pairs]]\na = 'upstream'\nb = 'fastvideo'\nb_options = { cache_pass = false }"),
        "{tmp}/bad.toml: pairs[0].b_options: options apply to reference sides only"),
    Bad("case-bad-size-limit", lambda c: c.run_case(CASE_HEAD + "max_capture_bytes = 'lots'"),
        "{tmp}/bad.toml: max_capture_bytes: must be a byte count such as 2000000000, 500MB or 2GiB, got 'lots'"),
    Bad("case-not-utf8", lambda c: (argv := c.run_case("")) and (c.tmp / "bad.toml").write_bytes(b"\xffprompt") and argv,
        "{tmp}/bad.toml: not valid TOML: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    # -- stored captures -------------------------------------------------------------------------
    Bad("capture-other-schema", lambda c: ["compare", c.stored, c.manifest(c.capture(), lambda d: d.update(schema="other/thing"))],
        "{B}/manifest.json: not a waypoint-parity capture manifest (schema 'other/thing')"),
    Bad("capture-newer-schema-version", lambda c: ["compare", c.stored, c.manifest(c.capture(), lambda d: d.update(schema_version=3))],
        "{B}/manifest.json: capture schema version 3 is not supported (this harness reads versions 1, 2); re-run the capture"),
    Bad("capture-manifest-not-json", lambda c: ["compare", c.stored, (b := c.capture()) and (b / "manifest.json").write_text("[1,") and b],
        "{B}/manifest.json: manifest is not valid JSON (Expecting value: line 1 column 4 (char 3))"),
    Bad("capture-without-tensor-table", lambda c: ["compare", c.stored, c.manifest(c.capture(), lambda d: d.pop("tensors"))],
        "{B}/manifest.json: manifest has no 'tensors' table"),
    Bad("capture-unknown-stage", lambda c: ["compare", c.stored, c.manifest(c.capture(), lambda d: d["tensors"].update({"f0/step0.speed": d["tensors"]["f0/noise"]}))],
        "{B}/manifest.json: manifest names an unknown stage 'f0/step0.speed'"),
    Bad("capture-frame-file-missing", lambda c: ["compare", c.stored, _rm(c.capture() / "frames/000001.safetensors").parents[1]],
        "{B}/manifest.json: stage f1/controls.mouse points at missing file 'frames/000001.safetensors'"),
    Bad("capture-tensor-tampered", lambda c: ["compare", c.stored, _tamper(c)],
        "{B}/frames/000000.safetensors: stage f0/noise does not match its recorded sha256; the capture is corrupt"),
    Bad("capture-stage-missing-from-file", _drop_from_file,
        "{B}/frames/000000.safetensors: stage f0/latent is listed in the manifest but missing from the file"),
    Bad("compare-oracle-and-no-oracle", lambda c: ["compare", c.stored, c.stored, "--oracle", c.stored, "--no-oracle"],
        "--oracle and --no-oracle exclude each other"),
    Bad("compare-oracle-of-another-run", lambda c: ["compare", (a := c.capture("A")), a, "--oracle",
                                                      c.manifest(c.capture(), lambda d: d["case"].update(seed=7))],
        "{B}/manifest.json: not an oracle of {tmp}/A: its seed differs"),
    Bad("compare-target-holds-a-comparison", _comparison_there,
        "{tmp}/cmp: already holds a comparison; choose another --out"),
    Bad("verify-tampered-tensor", lambda c: ["verify", _tamper(c)],
        "{B}/frames/000000.safetensors: stage f0/noise does not match its recorded sha256; the capture is corrupt"),
    Bad("verify-shape-lie", lambda c: ["verify", c.manifest(c.capture(), _shape_lie)],
        "{B}/frames/000000.safetensors: stage f0/noise is bfloat16 [1, 1, 16, 32, 32] in the file but bfloat16 [1, 1, 16, 32, 31] in the manifest"),
    Bad("verify-frame-count-lie", lambda c: ["verify", c.manifest(c.capture(), lambda d: d.update(frames_written=3))],
        "{B}/manifest.json: frames_written is 3 but frame 2 has no tensors"),
    Bad("prompt-from-not-a-capture", lambda c: c.run(None, "--prompt-from", c.tmp),
        "{tmp}: not a capture: manifest.json is missing"),
    # -- run arguments, resume, resource limits ----------------------------------------------------
    Bad("out-is-a-file", lambda c: ["run", c.case, "--snapshot", c.ckpt, "-o", (c.tmp / "f").write_text("mine") and c.tmp / "f", "--device", "cpu"],
        "{tmp}/f: run folder already exists and is not empty; choose another --out or remove it"),
    Bad("option-without-value", lambda c: c.run(None, "--option", "sigmas"),
        "--option expects key=value, got 'sigmas'"),
    Bad("resume-complete-capture", lambda c: ["run", c.case, "--snapshot", c.ckpt, "-o", c.capture(), "--device", "cpu", "--resume"],
        "{B}: capture is already complete; nothing to resume"),
    Bad("resume-fastvideo", lambda c: c.run(None, "--side", "fastvideo", "--resume"),
        "--resume applies to reference sides (upstream, script) only"),
    Bad("resume-not-a-capture", lambda c: c.run(None, "--resume") if (c.out.mkdir() or (c.out / "notes.txt").write_text("x")) else None,
        "{out}: not a capture: manifest.json is missing"),
    Bad("budget-from-argument", lambda c: c.run(None, "--max-capture-bytes", "1MB"),
        "{out}: " + BUDGET + ", more than the 1.0 MB allowed by --max-capture-bytes; raise the limit or run fewer frames"),
    Bad("budget-from-case", lambda c: c.run_case(SMALL_CASE.replace("frames = 3", "frames = 3\nmax_capture_bytes = 2_000_000")),
        "{out}: " + BUDGET + ", more than the 2.0 MB allowed by the case's max_capture_bytes; raise the limit or run fewer frames"),
    Bad("budget-unreadable", lambda c: c.run(None, "--max-capture-bytes", "big"),
        "--max-capture-bytes must be a byte count such as 2000000000, 500MB or 2GiB, got 'big'"),
]


def _set_json(path: Path, **changes) -> Path:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return path.parents[1]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def check_rejected(argv, message, tmp_path, capsys):
    before = tree_digest(tmp_path)
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert (code, err) == (2, f"waypoint-parity: error: {message}\n")
    assert tree_digest(tmp_path) == before


def _fmt(message: str, tmp: Path) -> str:
    return message.format(S=tmp / "snap", B=tmp / "B", out=tmp / "out", tmp=tmp)


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_input_is_one_exact_line_exit_2_and_changes_nothing(bad, tiny_checkpoint, stored_capture, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WAYPOINT_PARITY_TRUST_REMOTE_CODE", raising=False)
    monkeypatch.delenv("WAYPOINT_PARITY_MAX_CAPTURE_BYTES", raising=False)
    ctx = Ctx(tmp_path, tiny_checkpoint, stored_capture)
    check_rejected(bad.make(ctx), _fmt(bad.message, tmp_path), tmp_path, capsys)


def test_there_are_at_least_25_distinct_bad_inputs():
    assert len({b.id for b in BAD}) == len(BAD) >= 25


def test_budget_from_environment_and_full_disk(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    ctx = Ctx(tmp_path, tiny_checkpoint, tmp_path)
    monkeypatch.setenv("WAYPOINT_PARITY_MAX_CAPTURE_BYTES", "1.5MB")
    check_rejected(ctx.run(), _fmt("{out}: " + BUDGET + ", more than the 1.5 MB allowed by $WAYPOINT_PARITY_MAX_CAPTURE_BYTES; "
                                   "raise the limit or run fewer frames", tmp_path), tmp_path, capsys)
    monkeypatch.delenv("WAYPOINT_PARITY_MAX_CAPTURE_BYTES")
    argv = _disk_full(ctx, monkeypatch)
    check_rejected(argv, _fmt("{out}: " + BUDGET + ", but {tmp} has 105.9 MB free and 104.9 MB of it is kept as a margin; "
                              "free some space or choose another --out", tmp_path), tmp_path, capsys)


def test_the_estimate_is_printed_and_close_to_the_real_size(tiny_checkpoint, tmp_path, capsys):
    ctx = Ctx(tmp_path, tiny_checkpoint, tmp_path)
    assert main([str(a) for a in ctx.run(None, "--max-capture-bytes", "4MB")]) == 0
    out = capsys.readouterr().out
    assert f"capture estimate: 3.0 MB for 3 frames x 4 steps (974.7 KB per frame); limit 4.0 MB from --max-capture-bytes;" in out
    real = sum(p.stat().st_size for p in ctx.out.rglob("*") if p.is_file())
    assert 0.9 < 3.0e6 / real < 1.1


# -- failures of the model during a run: one line naming frame, step, stage; finished frames kept ----------

RUNTIME = [
    ("nan@1:2", "{out}: frame 1, step 1, step.velocity: the model produced 2 NaN/Inf values, first at channel 3, y 4, x 5 (nan); "
                "frame 0 is kept, the capture is marked incomplete", 1),
    ("shape@0:3", "{out}: frame 0, step 2, step.velocity: the model returned shape [1, 1, 16, 32, 31], expected [1, 1, 16, 32, 32] "
                  "(the latent's); no frame was finished, the capture is marked incomplete", 0),
    ("raise@2:5", "{out}: frame 2, cache_pass: the model raised RuntimeError: hook: boom", 2),
]


@pytest.mark.parametrize("hook, message, kept", RUNTIME, ids=["nan", "wrong-velocity-shape", "model-raises"])
def test_model_failure_is_one_line_and_keeps_finished_frames(hook, message, kept, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from parity.capture import Capture

    snap = hooked_copy(tiny_checkpoint, tmp_path / "snap")
    ctx = Ctx(tmp_path, tiny_checkpoint, tmp_path)
    argv = ctx.run(snap, "--trust-remote-code")
    before = tree_digest(tmp_path)
    monkeypatch.setenv(HOOK_ENV, hook)
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert (code, err) == (2, f"waypoint-parity: error: {_fmt(message, tmp_path)}\n")
    after = tree_digest(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before
    cap = Capture.open(ctx.out)
    assert not cap.complete and cap.manifest["frames_written"] == kept and cap.manifest["error"] == _fmt(message, tmp_path)


# -- differences between captures are divergences, not errors --------------------------------------------

def _synthetic(path: Path, shape, with_cache_pass: bool):
    from parity.capture import CaptureWriter

    w = CaptureWriter(path, {"side": path.name})
    w.record_prompt(torch.ones(1, 4, 2), torch.tensor([[False, False, True, True]]))
    with w.frame(0) as rec:
        rec["noise"] = torch.ones(shape)
        if with_cache_pass:
            rec["cache_pass.input"] = torch.ones(shape)
    return w.close()


def test_other_stage_sets_and_shapes_are_divergences_not_errors(tmp_path, capsys):
    a = _synthetic(tmp_path / "a", (1, 1, 4, 8, 8), with_cache_pass=True)
    b = _synthetic(tmp_path / "b", (1, 1, 4, 8, 6), with_cache_pass=False)
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "cmp")]) == 0
    assert main(["compare", str(a), str(b), "--check"]) == 1
    out, err = capsys.readouterr()
    assert err == "" and "first divergence: frame 0, noise: shape [1, 1, 4, 8, 8] vs [1, 1, 4, 8, 6]" in out
    stages = {s["stage"]: s["status"] for s in _stages(tmp_path / "cmp")}
    assert stages == {"prompt.embedding": "pass", "prompt.pad_mask": "pass", "f0/noise": "shape mismatch",
                      "f0/cache_pass.input": "missing in B"}


def _stages(cmp: Path) -> list[dict]:
    import csv

    with open(cmp / "stages.csv") as fh:
        return list(csv.DictReader(fh))


def test_script_profile_keeps_its_sigma_fallback(tiny_checkpoint, tmp_path, capsys):
    snap = edit_config(copy_of(tiny_checkpoint, tmp_path / "snap"), scheduler_sigmas=None)
    ctx = Ctx(tmp_path, tiny_checkpoint, tmp_path)
    assert main([str(a) for a in ctx.run(snap, "--side", "script", "--trust-remote-code")]) == 0
    protocol = json.loads((ctx.out / "manifest.json").read_text())["protocol"]
    assert protocol["sigmas"] == [1.0, 0.94921875, 0.83984375, 0.0]  # (1, .9483, .838, 0) held in bf16


def test_no_weight_file_is_ever_unpickled():
    """Weights load from safetensors only: no torch.load, pickle or numpy pickle loading anywhere in the harness."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.glob("parity/**/*.py"), *root.glob("reference/**/*.py")]:
        text = path.read_text()
        for needle in ("torch.load(", "pickle.load", "allow_pickle=True", "import pickle", "import dill"):
            if needle in text:
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []
