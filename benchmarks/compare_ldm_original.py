"""The original-layout table against CompVis' own latent-diffusion code, on a tiny cin256-v2-like LDM.

NEEDS THE REFERENCE ENVIRONMENT (torch + einops) and a checkout of CompVis/latent-diffusion (its ``ldm``
package is imported from --ldm-src; omegaconf, used there only for an isinstance check, is stubbed); run
from the repository root:
    /path/to/refenv/bin/python -m benchmarks.compare_ldm_original --ldm-src /path/to/latent-diffusion
Builds, with that code, an openaimodel.UNetModel (SpatialTransformer, one head, context 16), the VQ
autoencoder's Encoder/Decoder with quant convs and a codebook, and a ClassEmbedder table, fills them with
seeded random weights, writes them as ONE original single file (model.diffusion_model.*, first_stage_model.*,
cond_stage_model.*), loads that file with models/pipelines/single_file.py and the matching diffusers configs,
and prints and saves (benchmarks/results/ldm_vs_original.json) the largest differences of the U-Net output,
the decoded image and the encoding.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ldm_vs_original.json"


def original_modules(ldm_src: str) -> dict[str, torch.nn.Module]:
    sys.path.insert(0, ldm_src)  # the external reference code itself (not this repository)
    stub, listconfig = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.listconfig")
    listconfig.ListConfig = type("ListConfig", (list,), {})
    stub.listconfig = listconfig
    sys.modules.setdefault("omegaconf", stub)
    sys.modules.setdefault("omegaconf.listconfig", listconfig)
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    dd = dict(double_z=False, z_channels=3, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
              num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    return {"model.diffusion_model.": UNetModel(image_size=8, in_channels=3, out_channels=3, model_channels=32,
                                                attention_resolutions=[2, 4], num_res_blocks=2, channel_mult=[1, 2, 2],
                                                num_heads=1, use_spatial_transformer=True, transformer_depth=1,
                                                context_dim=16),
            "first_stage_model.encoder.": Encoder(**dd), "first_stage_model.decoder.": Decoder(**dd),
            "first_stage_model.quant_conv.": torch.nn.Conv2d(3, 3, 1),
            "first_stage_model.post_quant_conv.": torch.nn.Conv2d(3, 3, 1),
            "first_stage_model.quantize.embedding.": torch.nn.Embedding(64, 3),
            "cond_stage_model.embedding.": torch.nn.Embedding(11, 16)}


def configs() -> dict[str, dict]:
    from models.pipelines.presets import LDM_CIN256_V2
    layout = copy.deepcopy(LDM_CIN256_V2)
    layout["unet"].update(sample_size=8, block_out_channels=[32, 64, 64], cross_attention_dim=16,
                          down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2,
                          up_block_types=["CrossAttnUpBlock2D"] * 2 + ["UpBlock2D"])
    layout["vqvae"].update(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                           up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, num_vq_embeddings=64,
                           sample_size=16)
    layout["class_embedder"].update(n_classes=11, embed_dim=16, unconditional_class=10)
    return layout


def main(ldm_src: str) -> None:
    from safetensors.torch import save_file

    from models.pipelines.single_file import load_single_file
    modules = original_modules(ldm_src)
    state = {}
    for prefix, module in modules.items():
        module.eval()
        for name, tensor in module.state_dict().items():
            z = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(len(state)))
            tensor.copy_(1 + 0.2 * z if name.endswith("weight") and tensor.dim() == 1 else 0.1 * z)
            state[prefix + name] = tensor.clone()
    x, z = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    image_in = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    t, labels = torch.tensor([10, 700]), torch.tensor([3, 10])
    m = modules
    with torch.no_grad():
        eps = m["model.diffusion_model."](x, t, context=m["cond_stage_model.embedding."](labels[:, None]))
        codebook = m["first_stage_model.quantize.embedding."].weight
        flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
        z_q = codebook[torch.cdist(flat, codebook).argmin(1)].reshape(2, 8, 8, 3).permute(0, 3, 1, 2)
        image = m["first_stage_model.decoder."](m["first_stage_model.post_quant_conv."](z_q))
        z_e = m["first_stage_model.quant_conv."](m["first_stage_model.encoder."](image_in))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "config"
        layout = configs()
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps(layout["model_index"]))
        for name in ("unet", "vqvae", "class_embedder", "scheduler"):
            (folder / name).mkdir()
            file = "scheduler_config.json" if name == "scheduler" else "config.json"
            (folder / name / file).write_text(json.dumps(layout[name]))
        save_file(state, Path(tmp) / "ldm.safetensors")
        pipe = load_single_file(Path(tmp) / "ldm.safetensors", config=folder)
    with torch.no_grad():
        diffs = {"unet_eps": pipe.unet(x, t, encoder_hidden_states=pipe.class_embedder(labels)) - eps,
                 "vq_decode": pipe.vae.decode(z) - image, "vq_encode": pipe.vae.encode(image_in) - z_e}
    result = {k: float(v.abs().max()) for k, v in diffs.items()}
    for k, v in result.items():
        print(f"{k:10s} max |ours - latent-diffusion| = {v:.2e}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"torch": torch.__version__, "max_abs_diff": result}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ldm-src", required=True, help="a checkout of CompVis/latent-diffusion (holds ldm/)")
    main(p.parse_args().ldm_src)
