"""The command-line convention shared by train.py, prune.py and evaluate.py.

Every script is ``main(config)`` plus a short ``parse_args(argv)``; the flags the scripts share are added
here, spelled, documented and validated once:

    add_model_flags(p, PRESETS)   --model / --preset / --norm-groups   what to load and how (models/loading.py)
    add_data_flags(p, DATASETS)   --data / --data-root                 the registry's names as choices
    add_run_flags(p)        --seed / --out / --device / --debug

``run(main, parse_args)`` is the script entry point. A user mistake raises one of the project's error
types (``UserError`` of common/errors.py, which the tracer's ``UnsupportedOpError`` extends, ``ValueError``,
``OSError``, ``FloatingPointError``); it is printed as ONE line ``error: ...`` and the script exits with status 2, the
status argparse uses for a bad flag. ``--debug`` prints the whole traceback before that line.

Checks that cost nothing (a folder is writable, a number is >= 1, a file name ends in .npz) live here
too, so that every script runs them before it loads a model or draws a sample.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from common.errors import UserError  # noqa: F401 (re-exported: scripts raise cli.UserError)

EXIT_USER_ERROR = 2  # as argparse's own "error: ..." for a bad flag
# The exceptions a script reports as ``error: ...`` (everything else is a bug: full traceback). UserError is a
# ValueError; the classes above common/ (the tracer's errors) extend it.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError)


def user_error_types() -> tuple[type[BaseException], ...]:
    return USER_ERRORS


def one_line(err: BaseException) -> str:
    """The exception's message on one line (multi-line messages, e.g. lists of misfit tensors, joined)."""
    parts = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(parts) or type(err).__name__


def run(main: Callable[..., Any], parse_args: Callable[[Sequence[str] | None], Any],
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, call ``main`` with what ``parse_args`` returned (a tuple is spread), and turn a user
    error into ``error: ...`` on stderr and exit status 2. Returns the exit status (0 on success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parsed = parse_args(argv)
        if parsed is None:  # parse_args handled the request itself (nothing left to run)
            return 0
        main(*parsed) if isinstance(parsed, tuple) else main(parsed)
    except user_error_types() as err:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


# ----------------------------------------------------------------------------------------------- argument types
def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


SEED_MAX = 2 ** 64 - 1  # torch.manual_seed takes 64 bits; a negative seed would alias a positive one


def check_seed(value: Any, name: str = "seed") -> None:
    """``value`` is a whole number in [0, 2**64 - 1]; else a one-line UserError naming ``name``. The bound of
    every seed, the scripts' --seed and the specs' ``seed`` alike."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise UserError(f"{name} must be a whole number in [0, 2**64 - 1], got {value!r}")


def seed_int(text: str) -> int:
    """argparse type: a seed, an integer in [0, 2**64 - 1] (torch.manual_seed's range)."""
    try:
        value = int(text)
        check_seed(value, "the seed")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err) if "seed" in str(err) else f"expected an integer, got {text!r}") \
            from None
    return value


def int_in_range(low: int, high: int, why: str) -> Callable[[str], int]:
    """argparse type: an integer in [low, high]; ``why`` names the bound (e.g. "the schedule's 1000 timesteps"),
    so that a value the run could only refuse later fails while the flags are parsed."""
    def parse(text: str) -> int:
        value = _int_at_least(text, low)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high} ({why}), got {value}")
        return value

    parse.__name__ = f"integer in [{low}, {high}]"
    return parse


def finite_float(text: str) -> float:
    """argparse type: a finite float (no nan / inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def device_name(text: str) -> str:
    """argparse type: a torch device string that exists on this machine (cpu, cuda, cuda:1, mps)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this PyTorch build or machine has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available here")
    return text


def npz_path(text: str) -> str:
    """argparse type: a file name ending in .npz (np.savez would silently append the suffix otherwise)."""
    if not text.endswith(".npz"):
        raise argparse.ArgumentTypeError(f"must be a .npz file name, got {text!r}")
    return text


# ----------------------------------------------------------------------------------------------- shared flags
def _default(p: argparse.ArgumentParser, value: Any) -> Any:
    # A parser built with argument_default=SUPPRESS (train.py) wants to know which flags were GIVEN; its
    # defaults then come from the config dataclass instead.
    return argparse.SUPPRESS if p.argument_default == argparse.SUPPRESS else value


def add_model_flags(p: argparse.ArgumentParser, presets: Iterable[str] | None = None, *, default: str | None,
                    help: str) -> None:
    """--model plus the loader's overrides for what a DDIM-codebase state dict does not store."""
    p.add_argument("--model", default=default, help=help)
    add_loader_overrides(p, presets)


def add_loader_overrides(p: argparse.ArgumentParser, presets: Iterable[str] | None = None) -> None:
    """--preset / --norm-groups: what a plain DDIM-codebase state dict cannot tell (models/loading.py).
    ``presets``: the preset names (models.PRESETS) as choices; None leaves the check to the loader."""
    p.add_argument("--preset", choices=None if presets is None else sorted(presets), default=_default(p, None),
                   help="architecture preset a DDIM-codebase state dict is read against: supplies image size, "
                        "GroupNorm groups and dropout, and must match the weights")
    p.add_argument("--norm-groups", type=positive_int, default=_default(p, None),
                   help="GroupNorm groups of a DDIM-codebase state dict (the weights cannot tell; default 32, "
                        "the DDPM's). A source that stores it must agree")


def add_data_flags(p: argparse.ArgumentParser, datasets: Iterable[str] | None = None, *, default: str = "shapes",
                   help: str = "dataset") -> None:
    """--data / --data-root; ``datasets``: the registry's names (data.DATASETS) as choices, None: data checks."""
    p.add_argument("--data", choices=None if datasets is None else tuple(datasets), default=_default(p, default),
                   help=f"{help}: shapes (procedural, no files), cifar10 (python pickle batches), folder "
                        f"(any image folder, center-cropped) or celeba (aligned CelebA images, the DDIM "
                        f"codebase's face crop) [default: {default}]")
    p.add_argument("--data-root", default=_default(p, None), help="the folder of --data cifar10 / folder / celeba")


def add_run_flags(p: argparse.ArgumentParser, *, out: str, seed_help: str = "random seed") -> None:
    p.add_argument("--seed", type=seed_int, default=_default(p, 0), help=f"{seed_help}, in [0, 2**64 - 1] [default: 0]")
    p.add_argument("--out", default=_default(p, out), help=f"parent folder of the numbered run folders [default: {out}]")
    p.add_argument("--device", type=device_name, default=_default(p, "cpu"),
                   help="torch device: cpu, cuda, cuda:1, ... [default: cpu]")
    add_debug_flag(p)


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")


# ----------------------------------------------------------------------------------------------- cheap checks
def check_writable_dir(folder: str | os.PathLike, flag: str) -> None:
    """``folder`` is a writable folder, or could be created as one (its nearest existing ancestor is a
    writable folder); else a UserError naming ``flag``. Creates nothing."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: {probe} is not writable")


def check_readable_file(path: str | os.PathLike, flag: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{flag} {path}: file is not readable")
    return path


def print_load_notes(source: str, info: dict, prefix: str) -> None:
    """Say which fields of the architecture the loader had to assume (a DDIM file stores no norm_groups)."""
    for note in info.get("notes", []):
        print(f"[{prefix}] {source}: {note}")
