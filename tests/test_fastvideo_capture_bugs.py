"""The capture names each porting bug at its stage and frame: FastVideo's PR head with one bug planted
at run time (monkeypatch, never an edit), against upstream (world_engine code), fp32 on the tiny
real-architecture checkpoint.

Needs FASTVIDEO_SRC at the PR head (the `stages` pipeline) and world_engine; otherwise skipped with
the reason. FastVideo runs in this process (one tree only), so the bugs are patched where the
pipeline really calls them: the denoising stage's `_cache_pass`, its transformer call site, its
streaming context, the text-encoding stage.

    FASTVIDEO_SRC=.../fv-head WORLD_ENGINE_SRC=.../world_engine python -m pytest -m fastvideo tests/test_fastvideo_capture_bugs.py
"""

from __future__ import annotations

import textwrap

import pytest

from parity.capture import StageKey
from parity.compare import FAIL, MISSING_A, MISSING_B, SHAPE

pytestmark = pytest.mark.fastvideo

CASE = """
    prompt = "A first-person gameplay video exploring a stylized world."
    seed = {seed}
    frames = 3
    [controls]
    buttons = [17]
    mouse = [0.1, -0.05]
"""
FP32 = {"model_dtype": "float32", "noise_dtype": "float32", "sigma_dtype": "float32", "vae_dtype": "float32",
        "encoder_dtype": "float32"}


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    from parity.fastvideo import fastvideo_status
    from reference.world_engine_code import world_engine_status

    for ok, why in (world_engine_status(), fastvideo_status()):
        if not ok:
            pytest.skip(why)
    from parity.fastvideo.generation import detect_generation

    if detect_generation().name != "stages":
        pytest.skip("FASTVIDEO_SRC is an older streaming revision; these bugs are planted in the PR head's stages")
    from parity.tiny.waypoint_arch import make_waypoint_checkpoint

    return make_waypoint_checkpoint(tmp_path_factory.mktemp("wp") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def upstream(head, tmp_path_factory):
    """fp32 upstream captures by seed, made once."""
    from parity.case import load_case
    from parity.runner import RunRequest
    from reference.runner import ReferenceRunner

    root, made = tmp_path_factory.mktemp("up"), {}

    def get(seed: int):
        if seed not in made:
            case_file = root / f"case{seed}.toml"
            case_file.write_text(textwrap.dedent(CASE.format(seed=seed)))
            case = load_case(case_file)
            runner = ReferenceRunner(head["snapshot"], code_source="world_engine")
            made[seed] = (case, runner.run(RunRequest(case, "upstream", root / f"s{seed}", "cpu", dict(FP32))))
        return made[seed]

    return get


@pytest.fixture
def compare_fastvideo(head, upstream, tmp_path):
    """compare_fastvideo(seed=42) -> ComparisonResult of upstream vs FastVideo (fp32, shared noise and prompt)."""
    from parity.capture import Capture
    from parity.compare import compare_captures
    from parity.fastvideo.runner import FastVideoRunner
    from parity.runner import RunRequest

    def run(seed: int = 42):
        case, up = upstream(seed)
        out = FastVideoRunner(bundle=head["bundle"]).run(
            RunRequest(case, "fastvideo", tmp_path / f"fv{seed}", "cpu", {"precision": "fp32"}, prompt_from=up))
        result = compare_captures(Capture.open(up), Capture.open(out))
        print(result.first_divergence.explain() if result.first_divergence else "no divergence")
        return result

    return run


def _stages():
    from fastvideo.pipelines.stages import waypoint_stages

    return waypoint_stages


class _CallSite:
    """Stands in for the transformer at the stage's call site: the planted bug changes the keyword
    arguments the stage passes, so the model (and its hooks) see what a buggy port would send."""

    def __init__(self, module, change):
        self.module, self.change = module, change

    def __call__(self, **kwargs):
        return self.module(**self.change(kwargs))

    def __getattr__(self, name):
        return getattr(self.module, name)


def _around(monkeypatch, cls, name, before=None, after=None):
    """Wrap `cls.name` (for the test only): `before(self)` may return an undo callable."""
    original = getattr(cls, name)

    def planted(self, *args, **kwargs):
        undo = before(self) if before else None
        try:
            out = original(self, *args, **kwargs)
        finally:
            if undo:
                undo()
        return after(self, out, *args) if after else out

    monkeypatch.setattr(cls, name, planted)


def _swap_transformer(change):
    def before(stage):
        real = stage.transformer
        stage.transformer = _CallSite(real, change)

        def undo():
            stage.transformer = real

        return undo

    return before


def test_unpatched_head_passes_in_fp32_over_three_seeds(compare_fastvideo):
    for seed in (0, 1, 2):
        result = compare_fastvideo(seed)
        assert result.passed, f"seed {seed}: {result.first_divergence.explain()}"


def test_skipped_cache_pass_is_named_at_frame_0(monkeypatch, compare_fastvideo):
    monkeypatch.setattr(_stages().WaypointDenoisingStage, "_cache_pass", lambda self, *a, **k: None)
    first = compare_fastvideo().first_divergence
    assert (first.key, first.status) == (StageKey(0, None, "cache_pass.sigma"), MISSING_B)
    assert first.explain() == "frame 0: cache pass missing in B (f0/cache_pass.sigma)"


def test_cache_pass_at_sigma_1e_3_is_named_at_frame_0(monkeypatch, compare_fastvideo):
    import torch

    def sigma_1e_3(kw):
        return {**kw, "sigma": torch.full_like(kw["sigma"], 1e-3)}

    _around(monkeypatch, _stages().WaypointDenoisingStage, "_cache_pass", before=_swap_transformer(sigma_1e_3))
    first = compare_fastvideo().first_divergence
    assert (first.key, first.status) == (StageKey(0, None, "cache_pass.sigma"), FAIL)
    assert first.explain() == "frame 0, cache_pass.sigma: 0 vs 0.001"


def test_frozen_cache_pass_is_named_at_frame_0s_kv_cache(monkeypatch, compare_fastvideo):
    def keep_frozen(stage):
        cache = stage._streaming_ctx.kv_cache
        cache.set_frozen = lambda value: None  # the pass runs, but the cache stays frozen

        def undo():
            del cache.set_frozen

        return undo

    _around(monkeypatch, _stages().WaypointDenoisingStage, "_cache_pass", before=keep_frozen)
    result = compare_fastvideo()
    first = result.first_divergence
    assert (first.key, first.status) == (StageKey(0, None, "kv.frames", 0), SHAPE)
    assert first.explain() == "frame 0, layer 0, kv.frames: visible frames [0] vs []"
    assert next(s for s in result.stages if s.key == StageKey(0, None, "cache_pass.output")).passed


def test_noise_seeded_one_frame_ahead_is_named_at_frame_0(monkeypatch, compare_fastvideo):
    def seed_plus_one(stage, out, batch, args):
        stage._streaming_ctx.batch.seed = int(batch.seed or 0) + 1  # seed + frame + 1
        return out

    _around(monkeypatch, _stages().WaypointDenoisingStage, "streaming_reset", after=seed_plus_one)
    result = compare_fastvideo()
    first = result.first_divergence
    assert (first.key, first.status) == (StageKey(0, None, "noise.native"), FAIL)
    assert first.explain().startswith("frame 0, noise.native: fastvideo's native noise matches no known rule at frame 0")
    assert "seeded 43" in first.explain()
    # shared noise: everything the model computed still agrees
    assert all(s.passed for s in result.stages if s.key.family != "noise.native")


def test_noise_generator_seeded_once_is_named_at_frame_1(monkeypatch, compare_fastvideo):
    import torch

    made = {}

    def once(device=None):  # the port keeps the first frame's generator instead of seeding one per frame
        if "g" not in made:
            made["g"] = torch.Generator(device=device)
            return made["g"]
        return _NoReseed(made["g"])

    stages = _stages()
    monkeypatch.setattr(stages, "torch", _TorchWith(Generator=once))  # this module's `torch` only
    first = compare_fastvideo().first_divergence
    assert (first.key, first.status) == (StageKey(1, None, "noise.native"), FAIL)
    assert "seeded 42" in first.explain()


class _TorchWith:
    """The torch module as one FastVideo module sees it, with some names replaced."""

    def __init__(self, **replaced):
        self.replaced = replaced

    def __getattr__(self, name):
        import torch

        return self.replaced[name] if name in self.replaced else getattr(torch, name)


class _NoReseed:
    """A generator whose `manual_seed` does nothing (the port seeded it once)."""

    def __init__(self, gen):
        self.gen = gen

    def manual_seed(self, seed):
        return self.gen


def test_pad_rows_not_zeroed_fail_the_native_prompt(monkeypatch, compare_fastvideo):
    import torch

    def keep_pad_rows(stage, batch, args):
        if batch.prompt is None:
            return batch
        tokens = stage.tokenizer(batch.prompt, padding="max_length", truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            out = stage.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        batch.extra["waypoint_prompt_emb"] = out.last_hidden_state  # padded rows left as the encoder wrote them
        return batch

    _around(monkeypatch, _stages().WaypointTextEncodingStage, "forward", after=lambda s, out, b, a: keep_pad_rows(s, out, a))
    result = compare_fastvideo()
    first = result.first_divergence
    assert (first.key, first.status) == (StageKey(None, None, "prompt.native_embedding"), FAIL)
    assert next(s for s in result.stages if s.key.family == "prompt.native_pad_mask").passed
    # the shared prompt is what the models got: nothing else moves
    assert all(s.passed for s in result.stages if not s.key.family.startswith("prompt.native"))


def test_one_based_timestamps_are_named_at_frame_0_step_0(monkeypatch, compare_fastvideo):
    def one_based(kw):
        return {**kw, "frame_timestamp": kw["frame_timestamp"] + 1}

    _around(monkeypatch, _stages().WaypointDenoisingStage, "streaming_step", before=_swap_transformer(one_based))
    first = compare_fastvideo().first_divergence
    assert (first.key, first.status) == (StageKey(0, 0, "step.timestamp"), FAIL)
    assert first.explain() == "frame 0, step 0, step.timestamp: 0 vs 1"


def test_extra_denoise_step_is_named_not_taken_for_the_cache_pass(monkeypatch, compare_fastvideo):
    def one_more(stage):  # the loop runs once more, at sigma 0 with the cache frozen
        config = stage._streaming_ctx.fastvideo_args.pipeline_config
        saved = config.scheduler_sigmas
        config.scheduler_sigmas = list(saved) + [0.0]

        def undo():
            config.scheduler_sigmas = saved

        return undo

    _around(monkeypatch, _stages().WaypointDenoisingStage, "streaming_step", before=one_more)
    result = compare_fastvideo()
    first = result.first_divergence
    assert (first.key, first.status) == (StageKey(0, 4, "step.sigma"), MISSING_A)
    assert first.explain() == "frame 0: step 4 missing in A (f0/step4.sigma; an extra model call in B)"
    assert next(s for s in result.stages if s.key == StageKey(0, None, "cache_pass.sigma")).passed


def test_fastvideo_raising_mid_run_keeps_the_finished_frames(monkeypatch, head, upstream, tmp_path):
    from parity.capture import Capture
    from parity.compare import compare_captures
    from parity.errors import UserError
    from parity.fastvideo.runner import FastVideoRunner
    from parity.runner import RunRequest

    def raise_at_frame_2(kw):
        if int(kw["frame_timestamp"].reshape(-1)[0]) == 2:
            raise RuntimeError("planted failure at frame 2")
        return kw

    _around(monkeypatch, _stages().WaypointDenoisingStage, "streaming_step", before=_swap_transformer(raise_at_frame_2))
    case, up = upstream(42)
    with pytest.raises(UserError, match="FastVideo pipeline failed .RuntimeError: planted failure at frame 2"):
        FastVideoRunner(bundle=head["bundle"]).run(
            RunRequest(case, "fastvideo", tmp_path / "fv", "cpu", {"precision": "fp32"}, prompt_from=up))
    cap = Capture.open(tmp_path / "fv")
    assert not cap.complete and cap.manifest["frames_written"] == 2 and "planted failure" in cap.manifest["error"]
    result = compare_captures(Capture.open(up), cap)
    # frames 0 and 1 ended: every model stage is there and agrees; the head decodes only after the last
    # frame, so their decoded images never came
    missing = [s for s in result.stages if s.status == MISSING_B]
    assert {s.key for s in missing if s.key.frame in (0, 1)} == {StageKey(0, None, "decoded"), StageKey(1, None, "decoded")}
    assert all(s.passed for s in result.stages if s.key.frame in (0, 1) and s.key.family != "decoded")
    frame_2 = next(s for s in missing if s.key.frame == 2)
    assert frame_2.explain() == "frame 2 missing in B (f2/controls.mouse)"
