"""QualityProbe: one model's quality on the embedded default, measured in memory the way the benchmarks need it.

evaluate.py is the user-facing path (PNG folders, resumable, FID). The benchmarks instead measure many models
quickly and identically, so they share this probe, built once:

- held-out eps-MSE: ``diffusion.ddpm.HeldOutLoss`` on fixed (x0, t, eps) triples from the shapes test split;
- samples: deterministic DDIM (eta = 0) from the noise of global indices 0..N-1 of seed 0
  (``diffusion.samplers.IndexedNoise``), so every model starts from the same x_T, as the Diff-Pruning
  paper's SSIM protocol needs (Fang et al. 2023, Sec. 4.1). ``ProbeConfig``'s defaults are the first study's
  (DDIM-50, uniform skip, x0 clipped to [-1, 1]); ``STUDY`` is the paper's sampler (Fang et al. 2023,
  Table 1: DDIM with 100 steps; VainF/Diff-Pruning's ddpm_exp samples with the quad skip and no x0
  clipping) at 256 samples;
- FD-shapes and KID-shapes of those samples against held-out data (metrics/fd_shapes.py), after the same uint8
  quantisation the real side gets (and that PNGs would apply);
- SSIM of those samples to a reference model's samples from the same noise (metrics/ssim.py);
- #params and MACs (metrics/macs.py, the paper's convention).
"""
from __future__ import annotations

import copy

from dataclasses import dataclass

import torch
from torch import nn

from data.procedural import ProceduralShapes
from diffusion.ddpm import HeldOutLoss
from diffusion.samplers import sample
from diffusion.schedule import Schedule
from metrics.fd_shapes import FDShapesReference
from metrics.macs import count_macs
from metrics.ssim import consistency


@dataclass
class ProbeConfig:
    num_samples: int = 256     # generated samples of FD-shapes / KID / SSIM
    sample_steps: int = 50     # DDIM steps
    skip_type: str = "uniform"  # DDIM timestep spacing: "uniform" or "quad" (diffusion.samplers.ddim_timesteps)
    clip_x0: bool = True       # clamp the predicted x0 to [-1, 1] at every DDIM step
    heldout_images: int = 256  # test-split images of the held-out eps-MSE
    heldout_draws: int = 2     # (t, eps) draws per held-out image
    image_size: int = 32
    batch_size: int = 128      # sampling batch


# The study's measurement (docs/RESULTS.md, "Setup"): the Diff-Pruning paper's sampler at 256 samples.
STUDY = ProbeConfig(num_samples=256, sample_steps=100, skip_type="quad", clip_x0=False)


class QualityProbe:
    """Build once (renders the held-out sets, embeds the FD-shapes reference), then ``probe(model)`` per model."""

    def __init__(self, cfg: ProbeConfig, *, reference_images: torch.Tensor | None = None,
                 device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)  # where sampling and the held-out loss run; FD and SSIM run on the CPU
        test = ProceduralShapes(image_size=cfg.image_size, split="test")
        self.heldout = HeldOutLoss(torch.stack([test[i] for i in range(cfg.heldout_images)]), Schedule(),
                                   draws=cfg.heldout_draws, seed=1234)
        self.fd = FDShapesReference.build(image_size=cfg.image_size)
        self.reference_images = reference_images  # in [-1, 1]; SSIM is measured against these

    def _on_device(self, model: nn.Module) -> nn.Module:
        """``model`` itself when it is on the probe's device, else a copy there (the caller's model stays put)."""
        here = next(model.parameters()).device
        return model if here == self.device else copy.deepcopy(model).to(self.device)

    def samples(self, model: nn.Module) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] on the CPU, quantised to the uint8 grid a PNG would hold."""
        c = self.cfg
        x = sample(self._on_device(model).eval(), Schedule(), indices=list(range(c.num_samples)), seed=0,
                   image_shape=(3, c.image_size, c.image_size), steps=c.sample_steps, skip_type=c.skip_type,
                   batch_size=c.batch_size, clip_x0=c.clip_x0, device=self.device)
        return ((x.cpu() + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1

    def set_reference(self, model: nn.Module) -> torch.Tensor:
        """Make ``model``'s samples the SSIM reference (the teacher's, in the papers' protocol)."""
        self.reference_images = self.samples(model)
        return self.reference_images

    def __call__(self, model: nn.Module) -> dict:
        model = self._on_device(model)
        macs = count_macs(model, model.example_inputs())
        images = self.samples(model)
        out = {"params": macs.params, "macs_paper": macs.macs_paper, "heldout_loss": self.heldout(model.eval())}
        fd = self.fd.measure((images + 1) / 2)
        out.update(fd_shapes=fd["fd_shapes"], kid_shapes=fd["kid_shapes"])
        if self.reference_images is not None:
            out["ssim_to_teacher"] = consistency((images + 1) / 2, (self.reference_images + 1) / 2)
        return out

    def describe(self) -> dict:
        c = self.cfg
        return {"num_samples": c.num_samples, "ddim_steps": c.sample_steps, "skip_type": c.skip_type, "eta": 0.0,
                "clip_x0": c.clip_x0,
                "noise_seed": 0, "heldout_images": c.heldout_images, "heldout_draws": c.heldout_draws,
                "heldout_seed": 1234, "fd_shapes_reference": self.fd.description,
                "shapes_net_sha256": self.fd.net.weights_sha256}
