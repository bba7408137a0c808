"""The house rules a reviewer checks by reading imports and counting lines.

Top-level packages form a stack; a package imports only those below it (any import, at the top of a file or
inside a function, counts):

    common < data < diffusion < models < metrics < training < pruning < reports    < the scripts, benchmarks, tests

``diffusion`` is network-agnostic (schedules, losses, samplers, schedulers, guidance), so ``models`` may use it
(the latent pipelines build their samplers from it); ``training`` (the recipe, distillation) works on both.
``common`` (errors, run folders, the CLI convention) imports none of the others: the user-error base class
lives there (common/errors.py) and the packages above extend it. No package imports a script, the benchmarks
or the tests. No source file of a package, of the benchmarks or a top-level script is over 400 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STACK = ("common", "data", "diffusion", "models", "metrics", "training", "pruning", "reports")
ABOVE_ALL = ("prune", "train", "evaluate", "generate", "benchmarks", "tests")
# Exceptions would be listed here as (path prefix, module prefix), so that they stay visible; there are none.
KNOWN: set[tuple[str, str]] = set()


def imports(path: Path) -> list[str]:
    """Absolute module names imported anywhere in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", STACK)
def test_no_upward_imports(package):
    rank = STACK.index(package)
    bad = []
    for path in package_files(package):
        rel = path.relative_to(ROOT).as_posix()
        for name in imports(path):
            top = name.split(".")[0]
            upward = top in STACK and STACK.index(top) > rank
            if top in ABOVE_ALL or (upward and not any(rel.startswith(p) and name.startswith(m) for p, m in KNOWN)):
                bad.append(f"{rel} imports {name}")
    assert not bad, "\n".join(bad)


def test_common_imports_no_project_package():
    bad = [f"{p.relative_to(ROOT)} imports {n}" for p in package_files("common") for n in imports(p)
           if n.split(".")[0] in STACK[1:] + ABOVE_ALL]
    assert not bad, "\n".join(bad)


def test_the_tracer_errors_are_user_errors():
    from common.errors import UserError
    from pruning.trace.record import UnsupportedOpError
    from pruning.trace.tracer import ForwardFailed

    assert issubclass(UnsupportedOpError, UserError) and issubclass(ForwardFailed, UserError)
    assert issubclass(UnsupportedOpError, RuntimeError)  # as before, for callers that catch it so


@pytest.mark.parametrize("package", STACK + ("benchmarks", "scripts"))
def test_no_file_over_400_lines(package):
    files = sorted(ROOT.glob("*.py")) if package == "scripts" else package_files(package)  # prune.py, train.py, ...
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in files if (n := len(p.read_text().splitlines())) > 400]
    assert not long, "\n".join(long)


def test_every_package_has_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - set(ABOVE_ALL)
    assert packages <= set(STACK), f"packages outside the stack: {sorted(packages - set(STACK))}"


def test_prune_help_imports_no_heavy_library():
    """``python prune.py --help`` starts without scipy.stats, matplotlib or tensorboard: each is imported by
    the code that needs it (the additivity statistics, the figures, the training logger)."""
    import subprocess
    import sys

    code = ("import sys, prune; prune.build_parser().format_help(); "
            "print(sorted(m for m in ('scipy.stats', 'matplotlib', 'tensorboard', 'torch.utils.tensorboard') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
