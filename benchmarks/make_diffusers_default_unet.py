"""NEEDS diffusers (reference environment only; never imported by the project or its tests).

Writes tests/data/diffusers_default_unet/: a tiny UNet2DModel with diffusers' DEFAULT embedding and padding
settings (flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, attention_head_dim=8), saved by
save_pretrained, plus its output on two inputs (known_answer.safetensors). tests/test_diffusers_interop.py
loads the folder with models.load and compares.

    /path/to/refenv/bin/python benchmarks/make_diffusers_default_unet.py tests/data/diffusers_default_unet
"""
import json
import sys

import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file


def main(out: str) -> None:
    torch.manual_seed(0)
    model = UNet2DModel(sample_size=16, block_out_channels=(4, 8, 16), layers_per_block=1, norm_num_groups=2,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    # diffusers initialises some layers to zero; random weights everywhere make every path show in the output.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(out)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([3, 741])
    with torch.no_grad():
        eps = model(x, t).sample
    save_file({"x": x, "t": t, "eps": eps}, f"{out}/known_answer.safetensors")
    print(json.load(open(f"{out}/config.json")))


if __name__ == "__main__":
    main(sys.argv[1])
