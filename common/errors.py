"""The one base class of the mistakes a user can make, defined at the bottom of the package stack.

Scripts print a ``UserError`` as one line ``error: ...`` (``common/cli.py``). Packages above (the channel
tracer's ``UnsupportedOpError``, a spec's checks) subclass it or raise ``ValueError``, which it extends, so
that ``common`` never needs to import them to know what to print.
"""


class UserError(ValueError):
    """A mistake in what the user asked for (a flag, a file, a run folder, a model the tracer cannot read)."""


def refuse_unknown(names, known, *, what: str, hint: str = "") -> None:
    """Raise ValueError ``"{what}: [the first 8 unknown] ...{hint}"`` when ``names`` holds any not in ``known``
    (e.g. a config's width table or removed units against the layers a network has)."""
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{what}: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}{hint}")
