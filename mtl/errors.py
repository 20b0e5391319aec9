"""The one exception type for mistakes a user can make (bad config, missing files, ...).

The CLI prints its message as a single line and exits with status 2, without a traceback.
Anything else that escapes is a bug in mtl and keeps its traceback.
"""


class MtlError(Exception):
    """A user-facing error whose message is one self-explanatory line."""
