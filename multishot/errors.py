"""The one exception type for a user's mistake, shared by every ``multishot`` command.

A part raises :class:`UsageError` (or a subclass, e.g. :class:`multishot.config.ConfigError`)
for input the user can fix: a missing file, a bad config key, settings that contradict each
other. :func:`multishot.cli.main` turns it into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """A bad input, named in the message (one line, without the command name: the CLI adds it).

    Raising it from any ``multishot`` command (or from a training rank under ``multishot
    train``) ends the command with ``multishot COMMAND: MESSAGE`` on stderr and exit code 2.
    """


#: exit status of a command stopped by a :class:`UsageError` (argparse uses the same)
USAGE_EXIT = 2


def one_line(message: object) -> str:
    """``message`` as one line: a multi-line message (one problem per line, e.g. a config's
    failing keys) is joined with ``"; "``."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
