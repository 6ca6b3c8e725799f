"""Ablation attribution on the tiny checkpoint: coarse schedules lose detail, ranking follows effect size."""

from __future__ import annotations

import json

import pytest

from parity.diagnose.ablation import Ablation, ablations_from_summary, attribute


@pytest.fixture
def reference_run(tiny_checkpoint):
    from reference.runner import ReferenceRunner

    return lambda request: ReferenceRunner(tiny_checkpoint).run(request)


@pytest.fixture
def case4(write_case):
    from parity.case import load_case

    return load_case(write_case('prompt = "a stone road"\nseed = 11\nframes = 4\n[controls]\nbuttons = [17]\n', "four"))


def test_three_step_schedule_lowers_sharpness_and_ranks_above_a_tiny_tweak(case4, reference_run, tmp_path):
    ablations = (
        Ablation("tweak", "sigma 2 moved by one bf16 step", {"sigmas": [1.0, 0.8609585762023926, 0.733, 0.3205108940601349, 0.0]}),
        Ablation("sigmas_3step", "3-step schedule", {"sigmas": [1.0, 0.949, 0.840, 0.0]}),
        Ablation("nothing", "no change at all", {}),
    )
    table = attribute(case4, reference_run, tmp_path / "ablate", ablations, log=lambda _m: None)
    rows = {r.ablation.name: r for r in table.rows}
    assert rows["sigmas_3step"].alone.sharpness_ratio < 0.5  # the schedule, not the noise, blurs
    assert rows["sigmas_3step"].rank == 1 and rows["nothing"].rank == 3
    assert rows["nothing"].alone.latent_rel_l2 == 0 and rows["nothing"].alone.sharpness_ratio == 1.0
    # One bf16 step of one sigma can tip the sample into another scene: very different, yet sharp.
    # That is the distinction the ranking draws: "different" is not "blurrier".
    assert rows["tweak"].alone.latent_rel_l2 > 0.1 and rows["tweak"].alone.sharpness_ratio > 0.6
    # cumulative in the given order: tweak, then 3-step (which replaces the schedule), then nothing
    assert rows["sigmas_3step"].cumulative.sharpness_ratio == pytest.approx(rows["sigmas_3step"].alone.sharpness_ratio)
    saved = json.loads((tmp_path / "ablate" / "attribution.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["sigmas_3step", "tweak", "nothing"]
    assert (tmp_path / "ablate" / "attribution.csv").read_text().startswith("rank,name,description")


def test_config_diff_of_a_comparison_becomes_ablations(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"config_diff": [
        {"field": "sigmas", "a": [1.0, 0.0], "b": [1.0, 0.94921875, 0.83984375, 0.0], "differs": True},
        {"field": "noise rule", "a": "shared: ...", "b": "native: torch.manual_seed(seed) once, global RNG per frame", "differs": True},
        {"field": "cache mode", "a": "ring", "b": "none", "differs": True},
        {"field": "encoder class", "a": "UMT5EncoderModel", "b": "SomethingElse", "differs": True},
        {"field": "seed", "a": 1, "b": 1, "differs": False},
    ]}))
    ablations, notes = ablations_from_summary(summary)
    got = {a.name: (a.options, a.noise) for a in ablations}
    assert got == {
        "config_sigmas": ({"sigmas": [1.0, 0.94921875, 0.83984375, 0.0]}, "shared"),
        "config_noise_rule": ({"noise_rule": "global"}, "native"),
        "config_cache_mode": ({"cache_mode": "none", "cache_pass": False}, "shared"),
    }
    assert notes == ["encoder class = 'SomethingElse': not a valid reference option value"]
