"""Tiny decoder-only autoencoder of the Waypoint-style test model (written by waypoint-parity).

decode(z): z (1, C, h, w) latent -> uint8 (H, W, 3) frame at `sample_size`, like upstream's
WorldEngineVAE.decode. Random weights; the output is a deterministic image of the latent.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class WorldEngineVAE(nn.Module):
    def __init__(self, latent_channels=16, hidden_channels=32, sample_size=(180, 320), **unused_config):
        super().__init__()
        self.sample_size = tuple(sample_size)
        self.conv_in = nn.Conv2d(latent_channels, hidden_channels, 3, padding=1)
        self.up1 = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1)
        self.up2 = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden_channels, 3, 3, padding=1)

    @torch.no_grad()
    def decode(self, z):
        dtype = self.conv_in.weight.dtype
        h = F.silu(self.conv_in(z.to(dtype)))
        h = F.silu(self.up1(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        h = F.silu(self.up2(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        y = torch.tanh(self.conv_out(h))
        y = F.interpolate(y.float(), size=self.sample_size, mode="bilinear", align_corners=False)
        img = ((y + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        img = img.permute(0, 2, 3, 1)
        return img[0] if img.shape[0] == 1 else img
