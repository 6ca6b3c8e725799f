"""Property-based tests (hypothesis): the metrics on zeros, infinities, NaN, bf16 rounding and constant
tensors, and the case parser on arbitrary TOML-able data. Kept small (max_examples) for 2-core CI."""

from __future__ import annotations

import math
import tomllib
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from parity.case import N_BUTTONS, parse_case
from parity.errors import UserError
from parity.metrics import compare_arrays

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite64 = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)
"""|x| <= 1e300 so that b - a stays finite; everything else about float64 is allowed, subnormals included."""
anything64 = finite64 | st.sampled_from([math.nan, math.inf, -math.inf])
shapes = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)


@st.composite
def pairs(draw, elements=finite64):
    shape = draw(shapes)
    return draw(arrays(np.float64, shape, elements=elements)), draw(arrays(np.float64, shape, elements=elements))


def _quiet(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow or invalid-value warning is a metric bug
        return compare_arrays(a, b)


@FAST
@given(pairs(anything64))
def test_never_raises_and_counts_nonfinite_exactly(ab):
    a, b = ab
    m = _quiet(a, b)
    assert m.nonfinite_a == int((~np.isfinite(a)).sum()) and m.nonfinite_b == int((~np.isfinite(b)).sum())
    assert m.numel == a.size
    assert -1.0 <= m.cosine <= 1.0
    assert m.rel_l2 >= 0 and m.max_abs >= 0 and m.mean_abs >= 0 and not math.isnan(m.rel_l2)


@FAST
@given(pairs())
def test_finite_pairs_symmetry_and_ranges(ab):
    a, b = ab
    m, r = _quiet(a, b), _quiet(b, a)
    assert m.max_abs == r.max_abs and m.mean_abs == r.mean_abs and m.worst_index == r.worst_index
    assert math.isclose(m.cosine, r.cosine, rel_tol=1e-12, abs_tol=1e-12)
    assert -1.0 <= m.cosine <= 1.0 and m.nonfinite_a == m.nonfinite_b == 0
    assert m.max_abs >= m.mean_abs * (1 - 1e-12) and (m.worst_a, m.worst_b) == (float(a[m.worst_index]), float(b[m.worst_index]))


@FAST
@given(arrays(np.float64, shapes, elements=anything64))
def test_a_tensor_against_itself(a):
    m = _quiet(a, a)
    assert m.rel_l2 == 0.0 and m.max_abs == 0.0 and m.sqnr_db == math.inf
    finite = a[np.isfinite(a)]
    if np.any(finite != 0):
        assert math.isclose(m.cosine, 1.0, abs_tol=1e-12)
    else:
        assert m.cosine == 1.0  # both zero (after NaN/Inf are left out): equal by definition


@FAST
@given(shapes, finite64, finite64)
def test_constant_tensors(shape, c, d):
    a, b = np.full(shape, c), np.full(shape, d)
    m = _quiet(a, b)
    if c == d:
        assert m.rel_l2 == 0.0
    elif c == 0.0:
        assert m.rel_l2 == math.inf and m.cosine == 0.0 and m.sqnr_db == -math.inf
    else:
        assert math.isclose(m.rel_l2, abs(d - c) / abs(c), rel_tol=1e-9)
        assert m.cosine == (0.0 if d == 0 else math.copysign(1.0, c * d)) or math.isclose(m.cosine, math.copysign(1.0, c * d))
    assert math.isclose(m.max_abs, abs(d - c), rel_tol=1e-12) and math.isclose(m.mean_abs, abs(d - c), rel_tol=1e-12)


@FAST
@given(st.integers(1, 64), st.integers(0, 2**32 - 1), st.floats(-30, 30))
def test_zeros_and_infinities(n, seed, log_scale):
    a = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 10.0**log_scale
    zeros = torch.zeros(n, dtype=torch.float64)
    assert _quiet(zeros, zeros).rel_l2 == 0.0 and _quiet(zeros, zeros).cosine == 1.0
    m = _quiet(zeros, a)
    assert m.rel_l2 == (math.inf if a.abs().max() > 0 else 0.0)
    b = a.clone()
    b[0] = math.inf
    m = _quiet(a, b)
    assert (m.nonfinite_a, m.nonfinite_b) == (0, 1)
    assert m.rel_l2 == 0.0  # the Inf element is counted, and left out of every other metric


@FAST
@given(arrays(np.float32, shapes, elements=st.floats(min_value=2.0**-100, max_value=2.0**100, width=32) | st.floats(-(2.0**100), -(2.0**-100), width=32) | st.just(0.0)))
def test_bf16_rounding_stays_within_its_unit_roundoff(x):
    a = torch.from_numpy(x)
    b = a.to(torch.bfloat16)
    m = _quiet(a, b)
    assert m.rel_l2 <= 2.0**-8 * (1 + 1e-9)  # round to nearest: each element within 2^-8 relative
    assert m.nonfinite_b == 0 and (m.cosine >= 1 - 2.0**-15 or not np.any(x))


# -- the case parser ------------------------------------------------------------------------------------

toml_scalars = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=8))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=12)
keys = st.sampled_from(["name", "description", "prompt", "seed", "frames", "controls", "alignment", "options", "pairs",
                        "tolerances", "max_capture_bytes", "segments", "buttons", "mouse", "scroll", "noise", "a", "b"]) | st.text(max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, toml_values, max_size=8))
def test_any_data_is_a_case_or_a_user_error(data):
    try:
        case = parse_case(data)
    except UserError as exc:
        assert "\n" not in exc.one_line()
    else:
        assert case.frames == len(case.controls) >= 1


@st.composite
def valid_cases(draw):
    frames = draw(st.integers(1, 12))
    buttons = st.lists(st.integers(0, N_BUTTONS - 1), max_size=4)
    number = st.floats(-1e6, 1e6, allow_nan=False)
    data = {"prompt": draw(st.text(max_size=20)), "seed": draw(st.integers(0, 2**63 - 1)), "frames": frames,
            "controls": {"buttons": draw(buttons), "mouse": [draw(number), draw(number)], "scroll": draw(number)},
            "alignment": {"noise": draw(st.sampled_from(["shared", "native"])), "prompt": draw(st.sampled_from(["shared", "native"]))}}
    cuts = sorted(draw(st.sets(st.integers(0, frames), max_size=4)) | {0, frames})
    segments = []
    for start, end in zip(cuts, cuts[1:]):
        if draw(st.booleans()):
            segments.append({"frames": [start, end], "buttons": draw(buttons), "mouse": [draw(number), draw(number)]})
    data["controls"]["segments"] = segments
    return data


def _to_toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        import json

        return json.dumps(value)  # a JSON string is a valid TOML basic string for these characters
    if isinstance(value, list):
        return "[" + ", ".join(_to_toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{_to_toml(k)} = {_to_toml(v)}" for k, v in value.items()) + " }"


@settings(max_examples=60, deadline=None)
@given(valid_cases())
def test_valid_cases_round_trip_through_toml(data):
    assume(all(0x20 <= ord(c) < 0xD800 and c != "\x7f" for c in data["prompt"]))  # what json.dumps escapes TOML-compatibly
    text = "\n".join(f"{k} = {_to_toml(v)}" for k, v in data.items())
    assert tomllib.loads(text) == data
    case = parse_case(tomllib.loads(text))
    assert (case.prompt, case.seed, case.frames) == (data["prompt"], data["seed"], data["frames"])
    for seg in data["controls"]["segments"]:
        for f in range(*seg["frames"]):
            assert case.controls[f].buttons == tuple(sorted(set(seg["buttons"])))
            assert case.controls[f].mouse == tuple(seg["mouse"])
    assert parse_case(_from_describe(case.describe())).describe() == case.describe()


def _from_describe(d: dict) -> dict:
    """A case written back from its manifest form: every frame becomes its own segment."""
    return {"prompt": d["prompt"], "seed": d["seed"], "frames": d["frames"], "name": d["name"], "alignment": d["alignment"],
            "controls": {"segments": [{"frames": [i, i + 1], **c} for i, c in enumerate(d["controls"])]}}


def test_parse_case_reports_a_non_table_document():
    with pytest.raises(UserError):
        parse_case({"prompt": "p", "seed": 1, "frames": 1, "controls": {"segments": [1]}})
