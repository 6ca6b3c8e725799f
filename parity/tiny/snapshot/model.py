"""Tiny Waypoint-style world model, written by waypoint-parity as a random-weight test model.

It is not Overworld's model: it keeps the upstream call signature, dtype policy and KV-cache
protocol so the harness can exercise every stage. Shapes: B batch, T frames per call (1),
C latent channels, H/W latent size, N tokens per frame, D d_model, L prompt tokens.

    v = model(x, sigma, frame_timestamp, prompt_emb, prompt_pad_mask, mouse, button, scroll, kv_cache)

x (B,T,C,H,W); sigma (B,T) or scalar; frame_timestamp (B,T) long; prompt_emb (B,L,Dp);
mouse (B,T,2); button (B,T,n_buttons); scroll (B,T,1); kv_cache a StaticKVCache or None.
As upstream, cross-attention ignores prompt_pad_mask, and the noise-level embedding and RoPE
tables are computed in fp32 whatever the model dtype.

Behaviour, so that sampling errors look like they do in a trained model: the velocity is the exact
posterior-mean velocity of a rectified flow whose data is a small bank of procedural scenes held in
the weights (`scene_bank`), v = (x - E[x0 | x, sigma]) / sigma, with the posterior weights
softmax(-beta * mean((x - (1 - sigma) m_k)^2) / (2 sigma^2) + steer_k). The transformer, which sees
the controls, the prompt and the cached frames, supplies the steering logits and a small residual.
At high sigma the posterior is a blend of scenes; a schedule that leaves sigma high until its last
step (fewer or coarser steps) decodes a blend, i.e. loses detail.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def noise_level_features(sigma, dim):
    """Sinusoidal features of sigma, always fp32 (B,T) -> (B,T,dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    args = sigma.float()[..., None] * 1000.0 * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_tables(t, ys, xs, head_dim):
    """fp32 cos/sin (M, head_dim/2) for positions (t, y, x); the pairs are split across the axes."""
    pairs = head_dim // 2
    n_t = pairs // 3
    n_y = (pairs - n_t) // 2
    n_x = pairs - n_t - n_y
    angles = []
    for pos, n in ((t, n_t), (ys, n_y), (xs, n_x)):
        inv = 1.0 / (100.0 ** (torch.arange(n, dtype=torch.float32, device=pos.device) / max(n, 1)))
        angles.append(pos.float()[:, None] * inv[None, :])
    ang = torch.cat(angles, dim=-1)
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x, cos, sin):
    """x (B,heads,M,hd) in any dtype; rotation done in fp32, result cast back."""
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.q = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def forward(self, h, rope, layer_idx, kv_cache, frame_timestamp):
        B, M, _ = h.shape
        q = self.q(h).view(B, M, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k(h).view(B, M, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(h).view(B, M, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask = None
        if kv_cache is not None:
            k, v, mask = kv_cache.upsert(layer_idx, k, v, frame_timestamp)
        rep = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(B, M, -1))


class CrossAttention(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, h, ctx):
        B, M, D = h.shape
        q = self.q(h).view(B, M, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # No mask, on purpose: upstream lets zeroed pad rows take softmax weight.
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(B, M, D))


class MLP(nn.Module):
    def __init__(self, d_model, mlp_ratio):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_model * mlp_ratio)
        self.fc2 = nn.Linear(d_model * mlp_ratio, d_model)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads, mlp_ratio):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = RMSNorm(d_model), RMSNorm(d_model), RMSNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, n_kv_heads)
        self.cross = CrossAttention(d_model, n_heads)
        self.mlp = MLP(d_model, mlp_ratio)
        self.modulation = nn.Linear(d_model, 6 * d_model)

    def forward(self, h, cond, ctx, rope, layer_idx, kv_cache, frame_timestamp):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(cond)).chunk(6, dim=-1)
        a = self.norm1(h) * (1 + scale1) + shift1
        h = h + gate1 * self.attn(a, rope, layer_idx, kv_cache, frame_timestamp)
        h = h + self.cross(self.norm2(h), ctx)
        m = self.norm3(h) * (1 + scale2) + shift2
        return h + gate2 * self.mlp(m)


class WorldModel(nn.Module):
    def __init__(self, d_model=64, n_heads=4, n_kv_heads=2, n_layers=4, mlp_ratio=2, channels=16,
                 height=32, width=32, patch=(2, 2), tokens_per_frame=256, n_buttons=256,
                 prompt_embedding_dim=32, n_scenes=8, posterior_beta=20.0, residual_scale=0.1, **unused_config):
        super().__init__()
        self.channels, self.height, self.width = channels, height, width
        self.patch = tuple(patch)
        ph, pw = self.patch
        if (height // ph) * (width // pw) != tokens_per_frame:
            raise ValueError(f"tokens_per_frame {tokens_per_frame} != (height/ph)*(width/pw)")
        self.d_model, self.n_heads = d_model, n_heads
        self.patch_in = nn.Linear(channels * ph * pw, d_model)
        self.noise_mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.mouse_in = nn.Linear(2, d_model)
        self.button_in = nn.Linear(n_buttons, d_model, bias=False)
        self.scroll_in = nn.Linear(1, d_model, bias=False)
        self.prompt_in = nn.Linear(prompt_embedding_dim, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, n_kv_heads, mlp_ratio) for _ in range(n_layers))
        self.final_norm = RMSNorm(d_model)
        self.final_modulation = nn.Linear(d_model, 2 * d_model)
        self.patch_out = nn.Linear(d_model, channels * ph * pw)
        self.scene_bank = nn.Parameter(torch.zeros(n_scenes, channels, height, width))
        self.scene_steer = nn.Linear(d_model, n_scenes)
        self.posterior_beta, self.residual_scale = posterior_beta, residual_scale

    def forward(self, x, sigma, frame_timestamp, prompt_emb, prompt_pad_mask, mouse, button, scroll, kv_cache=None):
        B, T, C, H, W = x.shape
        ph, pw = self.patch
        gh, gw = H // ph, W // pw
        N = gh * gw
        dtype = self.patch_in.weight.dtype
        tokens = x.reshape(B, T, C, gh, ph, gw, pw).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, T * N, C * ph * pw)
        h = self.patch_in(tokens.to(dtype))

        sigma = torch.as_tensor(sigma, device=x.device).float().expand(B, T)
        cond = self.noise_mlp(noise_level_features(sigma, self.d_model).to(dtype))
        cond = cond + self.mouse_in(mouse.to(dtype)) + self.button_in(button.to(dtype)) + self.scroll_in(scroll.to(dtype))
        cond = cond.repeat_interleave(N, dim=1)
        ctx = self.prompt_in(prompt_emb.to(dtype))

        ts = frame_timestamp.reshape(B, T)[0].to(x.device)
        t_pos = ts.repeat_interleave(N)
        yy, xx = torch.meshgrid(torch.arange(gh, device=x.device), torch.arange(gw, device=x.device), indexing="ij")
        rope = rope_tables(t_pos, yy.reshape(-1).repeat(T), xx.reshape(-1).repeat(T), self.d_model // self.n_heads)

        for i, block in enumerate(self.blocks):
            h = block(h, cond, ctx, rope, i, kv_cache, frame_timestamp)
        shift, scale = self.final_modulation(F.silu(cond)).chunk(2, dim=-1)
        out = self.patch_out(self.final_norm(h) * (1 + scale) + shift)
        residual = out.reshape(B, T, gh, gw, C, ph, pw).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, T, C, H, W)
        steer = self.scene_steer(h.reshape(B, T, N, -1).mean(dim=2)).float()  # (B,T,K)
        return self.posterior_velocity(x, sigma, steer, residual).to(x.dtype)

    def posterior_velocity(self, x, sigma, steer, residual):
        """fp32 posterior-mean velocity over the scene bank, plus the transformer's residual."""
        s = sigma.float().clamp(min=1e-3)[..., None]  # (B,T,1); sigma = 0 is the cache pass, output unused
        bank = self.scene_bank.float()  # (K,C,H,W)
        xf = x.float()
        dist = ((xf[:, :, None] - (1 - s)[..., None, None, None] * bank[None, None]) ** 2).mean(dim=(-3, -2, -1))  # (B,T,K)
        weights = torch.softmax(steer - self.posterior_beta * dist / (2 * s * s), dim=-1)
        x0 = torch.einsum("btk,kchw->btchw", weights, bank)
        return (xf - x0) / s[..., None, None] + self.residual_scale * residual.float()
