"""Case files: the shipped ones load; every malformed one is rejected with file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from parity.case import load_case
from parity.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "cases").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_cases_load(path):
    case = load_case(path)
    assert case.frames == len(case.controls)


def test_seed_case_matches_the_official_script():
    case = load_case(REPO / "cases" / "seed-official.toml")
    assert (case.seed, case.frames, case.prompt) == (42, 8, "A first-person gameplay video exploring a stylized world.")
    assert all(c.buttons == (17,) and c.mouse == (0.0, 0.0) and c.scroll == 0 for c in case.controls)


def test_long_case_wraps_every_ring_of_the_tiny_model():
    from parity.tiny.checkpoint import TRANSFORMER_CONFIG as cfg

    case = load_case(REPO / "cases" / "long-rollout.toml")
    span_global = cfg["global_window"]  # frames covered by a global ring (slots x dilation)
    assert case.frames > 2 * max(cfg["local_window"], span_global)


def test_segments_override_only_their_fields(write_case):
    case = load_case(write_case("""
        prompt = "p"
        seed = 1
        frames = 4
        [controls]
        buttons = [17]
        [[controls.segments]]
        frames = [1, 3]
        mouse = [0.5, -0.25]
        scroll = -2
    """))
    assert [c.mouse for c in case.controls] == [(0, 0), (0.5, -0.25), (0.5, -0.25), (0, 0)]
    assert [c.buttons for c in case.controls] == [(17,)] * 4
    tensors = case.controls[1].tensors(dtype=__import__("torch").float32)
    assert tensors["scroll"].item() == -1.0 and tensors["mouse"].tolist() == [[[0.5, -0.25]]]


BAD = [
    ("colour = 1\nprompt = 'p'\nseed = 1\nframes = 1", "colour: unknown key"),
    ("seed = 1\nframes = 1", "prompt: missing (required)"),
    ("prompt = 'p'\nseed = 'x'\nframes = 1", "seed: must be an integer in [0, 2^63), got 'x'"),
    ("prompt = 'p'\nseed = 1\nframes = -3", "frames: must be a positive integer, got -3"),
    ("prompt = 'p'\nseed = 1\nframes = 2.5", "frames: must be a positive integer, got 2.5"),
    ("prompt = 'p'\nseed = 1\nframes = 1\n[controls]\nbuttons = [300]", "controls.buttons: key id 300 is outside [0, 256)"),
    ("prompt = 'p'\nseed = 1\nframes = 1\n[controls]\nmouse = [1]", "controls.mouse: must be [dx, dy], two finite numbers"),
    ("prompt = 'p'\nseed = 1\nframes = 1\n[controls]\nmouse = [1, nan]", "controls.mouse: must be [dx, dy], two finite numbers"),
    ("prompt = 'p'\nseed = 1\nframes = 4\n[[controls.segments]]\nframes = [2, 9]", "controls.segments[0].frames: [2, 9) is not a non-empty range inside [0, 4)"),
    ("prompt = 'p'\nseed = 1\nframes = 4\n[[controls.segments]]\nframes = [0, 2]\n[[controls.segments]]\nframes = [1, 3]",
     "controls.segments[1].frames: frame 1 is already set by controls.segments[0]; segments must not overlap"),
    ("prompt = 'p'\nseed = 1\nframes = 1\n[alignment]\nnoise = 'same'", "alignment.noise: must be \"shared\" or \"native\", got 'same'"),
    ("prompt = 'p'\nseed = 1\nframes = 1\n[options]\nsigmas = [1.0, 0.5, 0.7, 0.0]", "options: option 'sigmas' must be strictly descending, got [1.0, 0.5, 0.7, 0.0]"),
    ("prompt = 'p'\nseed = 1\nframes = 1\n[options]\nwarp = true", "options: unknown option 'warp'"),
    ("prompt = 'p'\nseed = 1\nframes = 1\n[options]\nmodel_dtype = 'int8'", "options: option 'model_dtype' is 'int8'; expected one of"),
    ("prompt = 'p'\nseed = 1\nframes = 1\n[tolerances]\n'step.speed' = { rel_l2 = 1 }", "tolerances: 'step.speed' is not a stage family"),
    ("prompt = 'p'\nseed = 1\nframes = 1\n[tolerances]\ndecoded = { rel_l2 = -1 }", "tolerances: decoded.rel_l2 must be a number >= 0, got -1"),
    ("prompt = 'p'\nseed = 1\nframes = 1\n[[pairs]]\na = 'upstream'\nb = 'other'", "pairs[0].b: must be one of upstream, script, fastvideo, got 'other'"),
    ("prompt = 'p'\nseed = 1\nframes = 1\nname = 'a b'", "name: 'a b' may only hold letters, digits"),
    ("prompt = \"p\nseed = 1", "not valid TOML"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_malformed_case_is_rejected_with_file_key_and_reason(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_case(path)
    line = err.value.one_line()
    assert line.startswith(f"{path}: ")
    assert message in line
    assert "\n" not in line
