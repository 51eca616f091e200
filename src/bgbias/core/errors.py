"""The one exception type the CLI turns into a one-line message (no traceback)."""


class BgbiasError(Exception):
    """A user-facing error: bad params, missing files, corrupt inputs, missing assets."""
