"""The conditional latent U-Net of Stable Diffusion (Rombach et al. 2022), with diffusers' module names.

``UNet2DConditionModel(config)`` builds the network that diffusers' class of the same name builds from the
same ``config.json`` (read by ``UNetConditionConfig.from_diffusers``), with parameter names equal to its
state-dict keys, so a diffusers state dict loads with no renaming. The layout, the skip wiring and the width
keys are in models/sd/wiring.py; the parts in embeddings.py, resnet.py, attention.py and transformer.py;
removed units (layer pruning) in removed.py.

    eps = unet(x, t, encoder_hidden_states=text, class_labels=None, added_cond_kwargs=None)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import refuse_unknown
from models.sd.attention import BasicTransformerBlock
from models.sd.config import UNetConditionConfig
from models.sd.embeddings import TimestepEmbedding, Timesteps
from models.sd.removed import RemovedResnet, RemovedTransformer2D, RemovedTransformerBlock
from models.sd.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from models.sd.transformer import Transformer2DModel
from models.sd.wiring import dense_widths, removable_units, topology, wire

# SDXL's micro-conditioning: original size (2), crop top-left (2), target size (2) (Podell et al. 2023, Sec. 2.2).
SDXL_TIME_IDS = 6


class Stage(nn.Module):
    """One down/mid/up block: ``resnets``, ``attentions`` (empty without cross-attention) and an optional
    one-element ``downsamplers`` / ``upsamplers`` list (diffusers keeps them in lists; the names follow)."""

    def __init__(self):
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()
        self.downsamplers = None
        self.upsamplers = None


class UNet2DConditionModel(nn.Module):
    """eps_theta(x_t, t, c): forward(x (B, in, H, W), t (B,) or scalar, encoder_hidden_states (B, M, D)) -> (B, out, H, W)."""

    def __init__(self, config: UNetConditionConfig):
        super().__init__()
        self.config = config
        dense = dense_widths(config)
        refuse_unknown(config.width_table, dense, what="config.widths names layers this U-Net does not have")
        units = removable_units(config)
        refuse_unknown(config.removed, units, what="config.removed names units this U-Net does not have",
                       hint=f"; removable units are e.g. {units[:4]}")
        nested = sorted(p for p in config.removed if ".transformer_blocks." in p
                        and p.split(".transformer_blocks.")[0] in config.removed)
        if nested:
            raise ValueError(f"config.removed lists {nested[:4]} inside an attention it also removes")
        widths = {**dense, **config.width_table}
        dense_plan = wire(config, dense.__getitem__)  # topology decisions (shortcuts) come from the dense net
        kinds = {path: kind for kind, path, _ in topology(config)}
        passthrough = frozenset(p for p in config.removed if p in kinds and (
            kinds[p] == "attn" or dense_plan[p]["in"] == dense_plan[p]["out"]))
        plan = wire(config, widths.__getitem__, passthrough)

        T, C0 = widths["time_embedding.linear_2"], config.block_out_channels[0]
        self.time_proj = Timesteps(num_channels=C0, flip_sin_to_cos=config.flip_sin_to_cos, freq_shift=config.freq_shift)
        self.time_embedding = TimestepEmbedding(in_channels=C0, hidden_channels=widths["time_embedding.linear_1"],
                                                out_channels=T)
        self.class_embedding = nn.Embedding(config.num_class_embeds, T) if config.num_class_embeds else None
        self.add_time_proj = self.add_embedding = None
        if config.addition_embed_type == "text_time":
            self.add_time_proj = Timesteps(num_channels=config.addition_time_embed_dim,
                                           flip_sin_to_cos=config.flip_sin_to_cos, freq_shift=config.freq_shift)
            self.add_embedding = TimestepEmbedding(in_channels=config.projection_class_embeddings_input_dim,
                                                   hidden_channels=widths["add_embedding.linear_1"], out_channels=T)
        k_in, k_out = config.conv_in_kernel, config.conv_out_kernel
        self.conv_in = nn.Conv2d(config.in_channels, widths["conv_in"], k_in, padding=(k_in - 1) // 2)

        L = len(config.block_out_channels)
        self.down_blocks = nn.ModuleList([Stage() for _ in range(L)])
        self.mid_block = Stage() if config.mid_block_type is not None else None
        self.up_blocks = nn.ModuleList([Stage() for _ in range(L)])
        for kind, path, level in topology(config):
            try:
                module = self._make(kind, path, level, plan[path], dense_plan[path], passthrough, T)
            except ValueError as e:  # e.g. a width the GroupNorm groups do not divide: name the unit
                raise ValueError(f"{path}: {e}") from e
            self._place(path, module)
        self._has_cross_attention = any(isinstance(m, BasicTransformerBlock) for m in self.modules())
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, plan["out"]["in"], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(plan["out"]["in"], config.out_channels, k_out, padding=(k_out - 1) // 2)

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "UNet2DConditionModel":
        """The dense network of a diffusers ``config.json`` dict (unsupported keys: one error naming them all)."""
        return cls(UNetConditionConfig.from_diffusers(config))

    # ------------------------------------------------------------------ construction helpers
    def _make(self, kind: str, path: str, level: int, p: dict, dense_p: dict, passthrough: frozenset, T: int) -> nn.Module:
        cfg = self.config
        scale = cfg.mid_block_scale_factor if path.startswith("mid_block") else 1.0
        groups = cfg.norm_num_groups
        if kind in ("res", "upres"):
            shortcut = dense_p["in"] != dense_p["out"]
            if path in cfg.removed:
                return RemovedResnet(in_channels=p["in"], out_channels=p["out"], shortcut=path not in passthrough,
                                     output_scale_factor=scale)
            if not shortcut and p["in"] != p["out"]:
                raise ValueError(f"conv2 width {p['out']} != input width {p['in']}; this ResNet has no 1x1 "
                                 "shortcut, so its residual add needs equal widths")
            return ResnetBlock2D(in_channels=p["in"], mid_channels=p["mid"], out_channels=p["out"], temb_channels=T,
                                 groups=groups, eps=cfg.norm_eps, dropout=cfg.dropout, output_scale_factor=scale,
                                 shortcut=shortcut)
        if kind == "attn":
            if path in cfg.removed:
                return RemovedTransformer2D()
            blocks = []
            for b, (attn1, attn2, ff) in enumerate(p["blocks"]):
                tb = f"{path}.transformer_blocks.{b}"
                if tb in cfg.removed:
                    blocks.append(RemovedTransformerBlock())
                    continue
                if attn1[0] % attn1[2] or attn2[0] % attn2[2] or ff % 2:
                    raise ValueError(f"transformer_blocks.{b}: q/k widths must divide by the heads and the "
                                     f"GEGLU width {ff} must be even (attn1 {attn1}, attn2 {attn2})")
                blocks.append(BasicTransformerBlock(dim=p["inner"], context_dim=cfg.cross_attention_dim[level],
                                                    attn1=attn1, attn2=attn2, ff_hidden=ff // 2, dropout=cfg.dropout))
            return Transformer2DModel(in_channels=p["in"], inner_channels=p["inner"], groups=groups,
                                      use_linear_projection=cfg.use_linear_projection, transformer_blocks=blocks)
        if kind == "down":
            return Downsample2D(in_channels=p["in"], out_channels=p["out"], padding=cfg.downsample_padding)
        return Upsample2D(in_channels=p["in"], out_channels=p["out"])

    def _place(self, path: str, module: nn.Module) -> None:
        parts = path.split(".")
        stage = self.mid_block if parts[0] == "mid_block" else getattr(self, parts[0])[int(parts[1])]
        name = parts[1] if parts[0] == "mid_block" else parts[2]
        if name in ("downsamplers", "upsamplers"):
            setattr(stage, name, nn.ModuleList([module]))
        else:
            getattr(stage, name).append(module)

    def widths(self) -> dict[str, int]:
        """The width table read back from the weights; equals ``{**dense_widths, **config.widths}`` restricted
        to the units present, after correct pruning surgery."""
        w = {}
        derived = ("conv_out", "time_emb_proj", "conv_shortcut", "to_k", "to_out.0", "ff.net.2", "proj_out",
                   "add_embedding.linear_2", "class_embedding")
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.endswith(derived):
                w[name] = m.weight.shape[0]
            elif isinstance(m, BasicTransformerBlock):
                w[f"{name}.attn1.heads"], w[f"{name}.attn2.heads"] = m.attn1.heads, m.attn2.heads
            elif isinstance(m, RemovedResnet) and m.conv_shortcut is not None:
                w[f"{name}.conv2"] = m.conv_shortcut.weight.shape[0]
        for name in [n for n in w if n.endswith(".conv_shortcut")]:
            del w[name]
        return w

    def example_inputs(self, batch: int = 1, tokens: int = 77) -> tuple:
        """Positional inputs of one forward pass, for tracing and MAC counting: (x, t, encoder_hidden_states)
        plus class_labels and added_cond_kwargs where the network needs them. Latents are sample-sized."""
        cfg, p = self.config, next(self.parameters())
        size = cfg.sample_size or 64
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        x = torch.randn(batch, cfg.in_channels, h, w, device=p.device)
        t = torch.full((batch,), 500, device=p.device, dtype=torch.long)
        text = torch.randn(batch, tokens, cfg.cross_attention_dim[0], device=p.device)
        labels = torch.zeros(batch, dtype=torch.long, device=p.device) if cfg.num_class_embeds else None
        added = None
        if cfg.addition_embed_type == "text_time":
            n_text = cfg.projection_class_embeddings_input_dim - SDXL_TIME_IDS * cfg.addition_time_embed_dim
            added = {"text_embeds": torch.randn(batch, n_text, device=p.device),
                     "time_ids": torch.tensor([[h * 8, w * 8, 0, 0, h * 8, w * 8]] * batch, device=p.device, dtype=torch.float32)}
        if added is not None:
            return x, t, text, labels, added
        return (x, t, text) if labels is None else (x, t, text, labels)

    # ------------------------------------------------------------------ forward
    def _embed(self, t: torch.Tensor, B: int, dtype: torch.dtype, class_labels, added_cond_kwargs) -> torch.Tensor:
        """temb (B, T): the time embedding plus the class / SDXL added embeddings. The sinusoids are computed in
        float32 and cast to ``dtype`` (the latents'), so a half-precision network runs as the reference does."""
        if t.dim() == 0:
            t = t.expand(B)
        emb = self.time_embedding(self.time_proj(t).to(dtype))  # (B, T)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(class_labels).to(emb.dtype)  # the class added to the time (LDM)
        if self.add_embedding is not None:
            text_embeds, time_ids = added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]
            # Each micro-conditioning id gets its own sinusoid, concatenated after the pooled text embedding.
            time_embeds = self.add_time_proj(time_ids.flatten()).reshape(B, -1)  # (B, n_ids * addition_time_embed_dim)
            added = torch.cat([text_embeds, time_embeds.to(text_embeds.dtype)], dim=-1).to(emb.dtype)
            emb = emb + self.add_embedding(added)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None, added_cond_kwargs: dict | None = None) -> torch.Tensor:
        """x: (B, in, H, W) latents x_t; t: (B,) or scalar timesteps; encoder_hidden_states: (B, M, D) text tokens;
        class_labels: (B,) ints (class-conditional nets); added_cond_kwargs: SDXL's {"text_embeds": (B, E),
        "time_ids": (B, 6)}. Returns the prediction (eps or v), (B, out, H, W)."""
        self._check_inputs(x, encoder_hidden_states, class_labels, added_cond_kwargs)
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        temb = self._embed(t.to(x.device), x.shape[0], x.dtype, class_labels, added_cond_kwargs)
        ctx = encoder_hidden_states
        if self.config.center_input_sample:
            x = 2 * x - 1.0
        skips = [self.conv_in(x)]
        for stage in self.down_blocks:
            for j, resnet in enumerate(stage.resnets):
                h = resnet(skips[-1], temb)
                if len(stage.attentions):
                    h = stage.attentions[j](h, ctx)
                skips.append(h)
            if stage.downsamplers is not None:
                skips.append(stage.downsamplers[0](skips[-1]))
        h = skips[-1]
        if self.mid_block is not None:
            h = self.mid_block.resnets[0](h, temb)
            h = self.mid_block.attentions[0](h, ctx)
            h = self.mid_block.resnets[1](h, temb)
        for stage in self.up_blocks:
            for j, resnet in enumerate(stage.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), temb)  # decoder skip connection
                if len(stage.attentions):
                    h = stage.attentions[j](h, ctx)
            if stage.upsamplers is not None:
                h = stage.upsamplers[0](h, size=skips[-1].shape[-2:])  # the next skip's size (odd inputs)
        return self.conv_out(F.silu(self.conv_norm_out(h), inplace=True))  # in place on the fresh GroupNorm output

    def _check_inputs(self, x, encoder_hidden_states, class_labels, added_cond_kwargs) -> None:
        """One-line errors for inputs the configured network cannot take, before any work."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {cfg.in_channels}, H, W)")
        if self._has_cross_attention:
            if encoder_hidden_states is None:
                raise ValueError("this U-Net has cross-attention: pass encoder_hidden_states (B, M, D)")
            if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[-1] not in cfg.cross_attention_dim:
                raise ValueError(f"encoder_hidden_states has shape {tuple(encoder_hidden_states.shape)}; expected "
                                 f"(B, M, {cfg.cross_attention_dim[0]})")
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError(f"this U-Net is class-conditional (num_class_embeds={cfg.num_class_embeds}): pass class_labels")
            if class_labels.numel() and (int(class_labels.min()) < 0 or int(class_labels.max()) >= cfg.num_class_embeds):
                raise ValueError(f"class label out of range: got {class_labels.tolist()}, expected 0..{cfg.num_class_embeds - 1}")
        if self.add_embedding is not None:
            missing = [k for k in ("text_embeds", "time_ids") if not added_cond_kwargs or k not in added_cond_kwargs]
            if missing:
                raise ValueError(f"this U-Net uses SDXL's text_time conditioning: added_cond_kwargs needs {missing}")
