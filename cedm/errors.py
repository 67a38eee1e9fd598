"""One exception type for problems a user can fix (bad input, missing weights, wrong arguments).

The command line prints these as one line and exits 2; the app shows them as a message, never a trace.
"""


class CedmError(Exception):
    """A clear, user-facing error."""
