"""The EMO model: backbone, ReferenceNet, audio, temporal, face locator and speed layers in one module.

    noisy latents (B, F, C, h, w) + face locator(mask)         reference latent, motion frames
                 |                                                        |
      backbone UNet (frames folded into batch) <--- ref-attention --- ReferenceNet (t = 0)
        every transformer block: attn1 + reference, attn2 + audio tokens (±m frames)
        after every spatial layer: temporal module (frames, motion frames, speed)
                 |
      predicted noise (B, F, C, h, w)

All weight initialisation is in `EMOModel.init_new_layers`: every layer EMO adds to the backbone
starts at zero output, so a pretrained backbone computes exactly what it did before.
"""

from __future__ import annotations

import copy

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from model.audio_attention import AudioProjection, audio_attention_layers, install_audio_attention
from model.conditioning import ForwardState
from model.config import EMOConfig
from model.face_locator import FaceLocator
from model.layer_groups import STAGE_GROUPS, set_trainable
from model.reference_net import ReferenceFeatures, ReferenceNet, install_reference_attention
from model.speed import SpeedEncoder
from model.temporal import install_temporal_modules, temporal_modules
from model.unet import build_unet, null_context, transformer_blocks


def _zero(layer: nn.Module) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class EMOModel(nn.Module):
    """Predicts the noise in a window of video latents, conditioned as in EMO."""

    def __init__(self, config: EMOConfig, backbone: UNet2DConditionModel | None = None):
        super().__init__()
        self.config = config
        backbone = backbone if backbone is not None else build_unet(config.unet)
        # ReferenceNet starts as a copy of the backbone (before either gets its processors).
        self.reference_net = ReferenceNet(copy.deepcopy(backbone))
        self.backbone = backbone
        self.face_locator = FaceLocator(backbone.config.in_channels)
        self.reference_gates = nn.Parameter(torch.zeros(len(transformer_blocks(backbone))))
        window = 2 * config.audio_context + 1
        in_dim = config.audio_feature_layers * config.audio_feature_dim
        self.audio_proj = AudioProjection(in_dim, config.audio_hidden, config.audio_dim, window,
                                          null_token=config.audio_null_token)
        self.audio_attention = audio_attention_layers(backbone, config.audio_dim)
        self.temporal, self.temporal_site_names = temporal_modules(backbone, config)
        self.speed_encoder = SpeedEncoder(config.speed_buckets, config.speed_max, config.speed_dim)

        self.state = ForwardState()
        install_reference_attention(backbone, self.state, self.reference_gates)
        install_audio_attention(backbone, self.state, self.audio_attention)
        install_temporal_modules(backbone, self.state, self.temporal)
        self.init_new_layers()

    def init_new_layers(self) -> None:
        """Zero the output of every layer EMO adds, so the backbone starts as it was loaded."""
        nn.init.zeros_(self.reference_gates)
        _zero(self.face_locator.conv_out)
        for layer in self.audio_attention:
            _zero(layer.to_out[0])
        for module in self.temporal:
            _zero(module.proj_out)
            _zero(module.speed_attention.to_out[0])

    def set_stage(self, stage: int) -> list[str]:
        """Freeze everything but `stage`'s layer groups (model/layer_groups.py); returns the trainable names."""
        return set_trainable(self, STAGE_GROUPS[stage])

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        for unet in (self.backbone, self.reference_net.unet):
            unet.enable_gradient_checkpointing() if enabled else unet.disable_gradient_checkpointing()
        self.state.checkpointing = enabled  # read by the temporal hooks (model/temporal.py)

    def encode_reference(self, ref_latent: torch.Tensor, motion: torch.Tensor | None = None) -> ReferenceFeatures:
        """ReferenceNet features of ref_latent (B, C, h, w) and motion frames (B, n, C, h, w).

        Cache and reuse them across denoising steps: they do not depend on the noisy latents.
        """
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.reference_net.parameters())
        with torch.set_grad_enabled(needs_grad):
            return self.reference_net(ref_latent, motion)

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        ref_latent: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
        speed: torch.Tensor | None = None,
        motion: torch.Tensor | None = None,
        reference: ReferenceFeatures | None = None,
        reference_keep: torch.Tensor | None = None,
        audio_keep: torch.Tensor | None = None,
        audio_region: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted noise (B, F, C, h, w).

        noisy (B, F, C, h, w); timesteps (B,); ref_latent (B, C, h, w); audio (B, F, 2m+1, L*D)
        windows from `audio_windows`; face_mask (B, 1, H, W) at image size; speed (B, F) degrees
        per frame; motion (B, n, C, h, w) latents of the previous clip's last frames (zeros for
        the first clip); audio_region (B, 1, H, W) at image size, where the audio attention writes
        (config.audio_region; None: everywhere); reference: precomputed `encode_reference` output instead of ref_latent
        and motion; *_keep (B,) 0/1 masks that drop a condition per sample (classifier-free guidance).
        Absent conditions are simply not applied.
        """
        b, f = noisy.shape[:2]
        if reference is None and ref_latent is not None:
            reference = self.encode_reference(ref_latent, motion)
        x = noisy
        if face_mask is not None:
            x = x + self.face_locator(face_mask.to(x.dtype))[:, None]  # (B, C, h, w) -> (B, 1, C, h, w)
        x = x.flatten(0, 1)  # (B, F, C, h, w) -> (B*F, C, h, w)
        state = self.state
        state.num_frames, state.reference = f, reference
        state.reference_keep, state.audio_keep = reference_keep, audio_keep
        state.audio_region = audio_region
        # (B, F, 2m+1, L*D) -> (B*F, 2m+1, L*D) -> (B*F, 2m+1, audio_dim)
        state.audio_tokens = self.audio_proj(audio.flatten(0, 1).to(x.dtype)) if audio is not None else None
        state.speed = self.speed_encoder(speed) if speed is not None else None  # (B, F, speed_dim)
        state.temporal = f > 1 or (reference is not None and bool(reference.motion))
        t = timesteps.reshape(-1).expand(b).repeat_interleave(f)  # (B,) -> (B*F,)
        out = self.backbone(x, t, encoder_hidden_states=null_context(self.backbone, b * f, x)).sample
        return out.view(b, f, *out.shape[1:])  # (B*F, C, h, w) -> (B, F, C, h, w)
