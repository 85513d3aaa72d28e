"""The one exception type that reaches users as a single line (see xdrec.cli)."""


class XdrecError(Exception):
    """A problem the user can fix: bad config, missing input, unknown stage. Shown as one line."""
