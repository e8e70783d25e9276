"""User-facing errors: the CLI prints these as one line and exits with status 2 (no traceback)."""


class UserError(Exception):
    """A problem with the user's input (config, data path, corpus, sizes) rather than a bug."""
