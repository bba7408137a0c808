"""The DDPM U-Net (Ho et al. 2020), with module names of the DDIM codebase and explicit per-layer widths.

Layout (L = len(ch_mult) levels, R = num_res_blocks)::

    temb.dense.{0,1}                       sinusoid(ch) -> Linear -> SiLU -> Linear
    conv_in                                3 -> ch
    down.{i}.block.{j}, down.{i}.attn.{j}  R ResBlocks (+ attention at attn_resolutions) per level
    down.{i}.downsample.conv               except at the last level
    mid.block_1, mid.attn_1, mid.block_2
    up.{i}.block.{j}, up.{i}.attn.{j}      R + 1 ResBlocks per level, each fed cat([h, skip])
    up.{i}.upsample.conv                   except at level 0
    norm_out, conv_out                     GN -> SiLU -> conv3x3 -> out_channels

The skip tensors pushed by the encoder are popped by the decoder in reverse order; ``_wire`` follows that
push/pop order once, at construction, to give every block its input width, so the wiring is written down
in one place and never recomputed from shapes in ``forward``.

Removed units (layer pruning, ``config.removed``): a listed ResBlock is built as ``ResShortcut`` and a listed
attention block as ``RemovedAttn`` (models/ddpm/skipped.py); the wiring is unchanged, so ``forward`` is too.

Widths: every conv/linear output width is looked up in ``config.widths`` (a pruned model) or falls
back to the dense DDPM width (``dense_widths``). Input widths follow from the wiring. The keys are:
``temb.dense.{0,1}``, ``conv_in``, ``<block>.conv1``, ``<block>.conv2``, ``<attn>.{q,k,v,proj_out}``,
``<attn>.heads``, ``down.{i}.downsample.conv``, ``up.{i}.upsample.conv``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import refuse_unknown
from models.ddpm.blocks import AttnBlock, Downsample, ResBlock, TimeEmbedding, Upsample
from models.ddpm.config import ModelConfig
from models.ddpm.skipped import RemovedAttn, ResShortcut


def _blocks(cfg: ModelConfig) -> list[tuple[str, str]]:
    """The topology: an ordered list of (kind, path) for every block, in forward order."""
    L, R = len(cfg.ch_mult), cfg.num_res_blocks
    out, res = [], cfg.image_size
    for i in range(L):
        for j in range(R):
            out.append(("res", f"down.{i}.block.{j}"))
            if res in cfg.attn_resolutions:
                out.append(("attn", f"down.{i}.attn.{j}"))
        if i != L - 1:
            out.append(("down", f"down.{i}.downsample"))
            res //= 2
    out += [("res", "mid.block_1"), ("attn", "mid.attn_1"), ("res", "mid.block_2")]
    for i in reversed(range(L)):
        for j in range(R + 1):
            out.append(("upres", f"up.{i}.block.{j}"))
            if res in cfg.attn_resolutions:
                out.append(("attn", f"up.{i}.attn.{j}"))
        if i != 0:
            out.append(("up", f"up.{i}.upsample"))
            res *= 2
    return out


def dense_widths(cfg: ModelConfig) -> dict[str, int]:
    """Widths of the unpruned DDPM U-Net for ``cfg`` (the default for every key)."""
    w = {"temb.dense.0": 4 * cfg.ch, "temb.dense.1": 4 * cfg.ch, "conv_in": cfg.ch}
    for kind, path in _blocks(cfg):
        level_ch = cfg.ch * cfg.ch_mult[-1 if path.startswith("mid") else int(path.split(".")[1])]
        if kind in ("res", "upres"):
            w[f"{path}.conv1"] = w[f"{path}.conv2"] = level_ch
        elif kind == "attn":
            for name in ("q", "k", "v", "proj_out"):
                w[f"{path}.{name}"] = level_ch
            w[f"{path}.heads"] = level_ch // cfg.head_channels if cfg.head_channels else cfg.num_heads
        elif cfg.resamp_with_conv:  # down / up sampling convs keep the level's width
            w[f"{path}.conv"] = level_ch
    return w


def removable_units(cfg: ModelConfig) -> list[str]:
    """Paths of the blocks a layer-pruned network may remove (every ResBlock and attention block), in forward order."""
    return [path for kind, path in _blocks(cfg) if kind in ("res", "upres", "attn")]


def _wire(cfg: ModelConfig, width: Callable[[str], int],
          passthrough: frozenset[str] = frozenset()) -> dict[str, dict[str, int]]:
    """Input/output widths of every block, following the forward pass with the given width lookup.
    ``passthrough``: removed blocks whose output is their input (no 1x1 shortcut)."""
    plan: dict[str, dict[str, int]] = {}
    cur = width("conv_in")
    skips = [cur]  # widths of the tensors the encoder pushes for the decoder
    for kind, path in _blocks(cfg):
        if path in passthrough:
            plan[path] = {"in": cur + (skips.pop() if kind == "upres" else 0)}
            plan[path]["out"] = plan[path]["in"]
        elif kind == "res":
            plan[path] = {"in": cur, "mid": width(f"{path}.conv1"), "out": width(f"{path}.conv2")}
        elif kind == "upres":
            plan[path] = {"in": cur + skips.pop(), "mid": width(f"{path}.conv1"), "out": width(f"{path}.conv2")}
        elif kind == "attn":
            plan[path] = {"in": cur, "qk": width(f"{path}.q"), "k": width(f"{path}.k"), "v": width(f"{path}.v"),
                          "out": width(f"{path}.proj_out"), "heads": width(f"{path}.heads")}
        else:  # down / up sampling
            out = width(f"{path}.conv") if cfg.resamp_with_conv else cur
            plan[path] = {"in": cur, "out": out}
        cur = plan[path]["out"]
        if path.startswith("down.") and (kind != "res" or not _has_attn_after(cfg, path)):
            skips.append(cur)
    plan["out"] = {"in": cur}
    return plan


def _has_attn_after(cfg: ModelConfig, block_path: str) -> bool:
    """True where an encoder ResBlock is followed by attention (then the attention output is the skip)."""
    level = int(block_path.split(".")[1])
    return cfg.image_size // 2 ** level in cfg.attn_resolutions


class UNet(nn.Module):
    """eps_theta(x_t, t): the DDPM noise-prediction U-Net. ``forward(x, t)`` -> eps of x's shape."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        dense = dense_widths(config)
        refuse_unknown(config.width_table, dense, what="config.widths names layers this U-Net does not have")
        widths = {**dense, **config.width_table}
        units = removable_units(config)
        refuse_unknown(config.removed, units, what="config.removed names units this U-Net does not have",
                       hint=f"; its removable units are {units}")
        dense_plan = _wire(config, dense.__getitem__)  # topology decisions come from the dense net
        # A removed attention block, or a removed ResBlock without a 1x1 shortcut, passes its input on.
        passthrough = frozenset(p for p in config.removed
                                if "mid" not in dense_plan[p] or dense_plan[p]["in"] == dense_plan[p]["out"])
        plan = _wire(config, widths.__getitem__, passthrough)
        self._check_residuals(plan, dense_plan)

        temb_ch = widths["temb.dense.1"]
        self.temb = TimeEmbedding(emb_ch=config.ch, hidden_ch=widths["temb.dense.0"], out_ch=temb_ch,
                                  flip_sin_to_cos=config.flip_sin_to_cos, freq_shift=config.freq_shift)
        self.conv_in = nn.Conv2d(config.in_channels, widths["conv_in"], 3, padding=1)

        L = len(config.ch_mult)
        self.down = nn.ModuleList([_Level() for _ in range(L)])
        self.mid = nn.Module()
        self.up = nn.ModuleList([_Level() for _ in range(L)])
        for kind, path in _blocks(config):
            try:
                if path in config.removed:
                    block = (RemovedAttn() if kind == "attn" else
                             ResShortcut(in_ch=plan[path]["in"], out_ch=plan[path]["out"], shortcut=path not in passthrough))
                else:
                    block = self._make_block(kind, plan[path], dense_plan[path], config, temb_ch)
                self._place(path, block)
            except ValueError as e:  # e.g. a width not divisible by the GroupNorm groups: name the block
                raise ValueError(f"{path}: {e}") from e
        self.norm_out = nn.GroupNorm(config.norm_groups, plan["out"]["in"], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(plan["out"]["in"], config.out_channels, 3, padding=1)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _make_block(kind: str, p: dict, dense_p: dict, config: ModelConfig, temb_ch: int) -> nn.Module:
        gn = dict(norm_groups=config.norm_groups, norm_eps=config.norm_eps)
        if kind in ("res", "upres"):
            return ResBlock(in_ch=p["in"], mid_ch=p["mid"], out_ch=p["out"], temb_ch=temb_ch, dropout=config.dropout,
                            shortcut=dense_p["in"] != dense_p["out"], **gn)
        if kind == "attn":
            d = dense_p if config.attn_scale == "dense" else p
            return AttnBlock(ch=p["in"], qk_ch=p["qk"], v_ch=p["v"], num_heads=p["heads"],
                             scale=(d["qk"] // d["heads"]) ** -0.5, **gn)
        if kind == "down":
            return Downsample(in_ch=p["in"], out_ch=p["out"], with_conv=config.resamp_with_conv,
                              padding=config.downsample_padding)
        return Upsample(in_ch=p["in"], out_ch=p["out"], with_conv=config.resamp_with_conv)

    def _place(self, path: str, module: nn.Module) -> None:
        parts = path.split(".")
        if parts[0] == "mid":
            setattr(self.mid, parts[1], module)
        elif parts[2] in ("block", "attn"):
            getattr(getattr(self, parts[0])[int(parts[1])], parts[2]).append(module)
        else:
            setattr(getattr(self, parts[0])[int(parts[1])], parts[2], module)

    @staticmethod
    def _check_residuals(plan: dict, dense_plan: dict) -> None:
        """Residual adds need equal widths on both sides; name the layer that breaks this."""
        for path, p in plan.items():
            if "qk" in p:
                if p["qk"] != p["k"]:
                    raise ValueError(f"{path}: q width {p['qk']} != k width {p['k']} (their dot product couples them)")
                if p["out"] != p["in"]:
                    raise ValueError(f"{path}.proj_out width {p['out']} != attention input width {p['in']} (residual add)")
            elif "mid" in p and dense_plan[path]["in"] == dense_plan[path]["out"] and p["in"] != p["out"]:
                raise ValueError(f"{path}.conv2 width {p['out']} != block input width {p['in']}; "
                                 "this block has no 1x1 shortcut, so its residual add needs equal widths")

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Positional inputs of one forward pass, on the model's device, for tracing and MAC counting:
        (x (batch, C, H, W) zeros, t (batch,) ones). Their values never matter, only shapes and dtypes."""
        c, device = self.config, self.conv_in.weight.device
        return (torch.zeros(batch, c.in_channels, c.image_size, c.image_size, device=device),
                torch.ones(batch, device=device))

    def widths(self) -> dict[str, int]:
        """The width table read back from the weights; equals the config's table after correct surgery."""
        w = {}
        for name, m in self.named_modules():
            # conv_out's width is the image's; temb_proj and nin_shortcut follow conv1 / conv2.
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name != "conv_out" and not name.endswith(("temb_proj", "nin_shortcut")):
                w[name] = m.weight.shape[0]
            elif isinstance(m, AttnBlock):
                w[f"{name}.heads"] = m.num_heads
            elif isinstance(m, ResShortcut) and m.nin_shortcut is not None:  # a removed block's output width
                w[f"{name}.conv2"] = m.nin_shortcut.weight.shape[0]
        return w

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) noisy images x_t; t: (B,) or scalar timesteps (float allowed). Returns eps (B, C, H, W)."""
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        temb = self.temb(t)  # (B, temb_ch)
        hs = [self.conv_in(x)]
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn):
                    h = level.attn[j](h)
                hs.append(h)
            if level.downsample is not None:
                hs.append(level.downsample(hs[-1]))
        h = hs[-1]
        h = self.mid.block_1(h, temb)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, temb)
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)  # decoder skip connection
                if len(level.attn):
                    h = level.attn[j](h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))  # in place on the fresh GroupNorm output


class _Level(nn.Module):
    """One resolution level: ``block`` and ``attn`` lists, and an optional down/upsampler."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.downsample = None
        self.upsample = None


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (what the papers call #Params)."""
    return sum(p.numel() for p in model.parameters())
