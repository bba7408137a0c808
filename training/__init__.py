"""Training and fine-tuning: the recipe train.py runs (``recipe.py``: TrainConfig, TrainState, data order,
lr schedule) and knowledge distillation from a dense teacher (``distill.py``).

It sits above ``diffusion`` (schedules, losses, samplers: network-agnostic) and ``models`` (the networks), so
neither of those imports it."""
