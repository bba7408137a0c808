"""NEEDS diffusers (reference environment only). A tiny unconditional LDM pipeline (UNet2DModel with diffusers'
default settings, as CompVis/ldm-celebahq-256 uses, + VQModel + DDIM), saved by save_pretrained, with the U-Net's
output on two inputs; then, in the project env, models.load(folder).unet reproduces it:

    /path/to/refenv/bin/python benchmarks/check_ldm_unet2d.py /tmp/ldm
    python -c "import torch, models; p = models.load('/tmp/ldm'); a = torch.load('/tmp/ldm/answer.pt'); \
print((p.unet(a['x'], a['t']) - a['eps']).abs().max())"      # 6.0e-07 on 2026-12-06 (diffusers 0.42.1)
"""
import torch, sys
from diffusers import UNet2DModel, VQModel, DDIMScheduler, LDMPipeline
torch.manual_seed(0)
unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                   norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D"))
vq = VQModel(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, num_vq_embeddings=16)
pipe = LDMPipeline(vqvae=vq, unet=unet, scheduler=DDIMScheduler())
pipe.save_pretrained(sys.argv[1])
x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)); t = torch.tensor([10, 900])
with torch.no_grad(): torch.save({"x": x, "t": t, "eps": unet(x, t).sample}, sys.argv[1] + "/answer.pt")
print("ok")
