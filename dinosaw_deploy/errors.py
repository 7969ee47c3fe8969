"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class DinosawError(Exception):
    """A problem the user can fix (bad input, missing artifact, offline download...)."""
