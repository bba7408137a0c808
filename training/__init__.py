"""Training and fine-tuning: what train.py runs.

    recipe.py          TrainConfig, TrainState, data order, lr schedule, run folders and releases
    families.py        the two model families behind one interface (ImageFamily: the DDPM U-Net on images)
    latent.py          LatentFamily: an SD-style conditional U-Net on cached VAE latents with captions
    resume.py          --resume: find, check and lock the run folder and its checkpoint
    distill.py         knowledge distillation from a dense teacher (DDPM U-Net: output / feature KD)
    distill_latent.py  the same losses for conditional latent U-Nets (BK-SDM / LAPTOP-Diff students)
    scalar_log.py      training scalars as plain files (jsonl, csv) next to TensorBoard

It sits above ``diffusion`` (schedules, losses, samplers: network-agnostic) and ``models`` (the networks), so
neither of those imports it."""
