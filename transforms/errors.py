"""One base class for errors a user can fix.

Jobs print a `UserError` as one line and exit 2: bad input, a bad flag value, a missing
weight file, a cluster that is down or refuses the credentials, a runner that cannot be
set up. Anything else is a bug: it keeps its traceback and exits 1.
"""


class UserError(Exception):
    """The message says what is wrong and what to do; it never holds a secret."""


def reason(e: Exception) -> str:
    """An error's reason in words: an OSError's own ("no such file or directory"), not "[Errno 2] ... 'path'"."""
    return e.strerror.lower() if isinstance(e, OSError) and e.strerror else str(e)
