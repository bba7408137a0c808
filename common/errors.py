"""The one base class of the mistakes a user can make, defined at the bottom of the package stack.

Scripts print a ``UserError`` as one line ``error: ...`` (``common/cli.py``). Packages above (the channel
tracer's ``UnsupportedOpError``, a spec's checks) subclass it or raise ``ValueError``, which it extends, so
that ``common`` never needs to import them to know what to print.
"""


class UserError(ValueError):
    """A mistake in what the user asked for (a flag, a file, a run folder, a model the tracer cannot read)."""
