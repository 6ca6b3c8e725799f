"""The real-architecture checkpoint's sizes (issue 12 item 1): the plan, not the weights (the real size
is 2 x 4.6 GB and is written on a GPU machine; tests/test_fastvideo.py runs it there, marked slow)."""

from __future__ import annotations

import pytest

from parity.errors import UserError
from parity.tiny.waypoint_arch import configs, make_waypoint_checkpoint


def test_real_size_is_waypoint_1_small():
    from reference.world_engine_code import latent_shape

    transformer, vae, text = configs("real")
    assert {k: transformer[k] for k in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_ratio", "tokens_per_frame")} == \
        {"d_model": 2560, "n_heads": 40, "n_kv_heads": 20, "n_layers": 22, "mlp_ratio": 5, "tokens_per_frame": 256}
    assert latent_shape(transformer) == (1, 1, 16, 32, 32)
    assert transformer["height"] * transformer["width"] == transformer["tokens_per_frame"]
    assert transformer["d_model"] // transformer["n_heads"] == 64  # FastVideo's cross-attention head size
    assert (transformer["local_window"], transformer["global_window"], transformer["global_attn_period"],
            transformer["global_pinned_dilation"]) == (16, 128, 4, 8)
    assert transformer["scheduler_sigmas"] == configs("tiny")[0]["scheduler_sigmas"]
    assert (vae["decoder_ch_0"], vae["decoder_ch_max"], len(vae["decoder_blocks_per_stage"])) == (128, 1024, 4)
    assert text["d_model"] == transformer["prompt_embedding_dim"] == 2048


def test_an_unknown_size_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UserError, match="unknown checkpoint size 'huge'"):
        make_waypoint_checkpoint(tmp_path / "wp", size="huge")
    assert not (tmp_path / "wp").exists()
