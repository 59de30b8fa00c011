"""The one exception type for a user's mistake, shared by every ``multishot`` command.

A part raises :class:`UsageError` (or a subclass, e.g. :class:`multishot.config.ConfigError`)
for input the user can fix: a missing file, a bad config key, settings that contradict each
other. :func:`multishot.cli.main` turns it into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import re


class UsageError(Exception):
    """A bad input, named in the message (one line, without the command name: the CLI adds it).

    Raising it from any ``multishot`` command (or from a training rank under ``multishot
    train``) ends the command with ``multishot COMMAND: MESSAGE`` on stderr and exit code 2.
    """


#: exit status of a command stopped by a :class:`UsageError` (argparse uses the same)
USAGE_EXIT = 2


def one_line(message: object) -> str:
    """``message`` as one line: a multi-line message (one problem per line, e.g. a config's
    failing keys) is joined with ``"; "``; credentials in it are masked (:func:`redact`)."""
    return redact("; ".join(part.strip() for part in str(message).splitlines() if part.strip()))


#: terminal colour / cursor codes (Ray colours its error texts)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
#: longest reason a table stores (a reason is a line for a person, not a log)
REASON_CHARS = 300


def short_reason(text: object, limit: int = REASON_CHARS) -> str:
    """One short line for a reject reason or an error column, from any exception text.

    ANSI codes are removed; of a multi-line text (a Ray task error carries the remote
    traceback, ``ray::…(pid=…)`` first and the exception last; Ray's out-of-memory text lists
    the top memory consumers with their command lines) only the exception line of a traceback,
    else the first line, is kept; credentials are masked (:func:`redact`); at most ``limit``
    characters (an ellipsis marks a cut).
    """
    lines = [line.rstrip() for line in _ANSI.sub("", str(text)).splitlines() if line.strip()]
    if not lines:
        return ""
    traceback_like = any(line.lstrip().startswith(("File \"", "Traceback (most recent call last)"))
                         for line in lines)
    if traceback_like:
        # the exception line: the last one not indented (a traceback's frames are)
        unindented = [line for line in lines if not line.startswith((" ", "\t"))]
        line = unindented[-1] if unindented else lines[-1]
        prefix = lines[0].split(":", 1)[0] if lines[0].startswith("ray.exceptions.") else ""
        line = f"{prefix}: {line}" if prefix and not line.startswith(prefix) else line
    else:
        line = lines[0]
    line = redact(" ".join(line.split()))
    return line if len(line) <= limit else line[: limit - 1] + "…"


#: query parameters that carry credentials (S3/GCS/Azure presigned URLs, pyarrow-style options)
_SECRET_PARAMS = (r"access_key|secret_key|secret|session_token|security_token|token|password|passwd|pwd"
                  r"|api_key|apikey|key|sig|signature|credential|sas|aws_access_key_id"
                  r"|aws_secret_access_key|aws_session_token|x-amz-signature|x-amz-credential"
                  r"|x-amz-security-token|x-goog-signature|x-goog-credential")
_QUERY_SECRET = re.compile(rf"([?&;](?:{_SECRET_PARAMS})=)([^&;\s'\"]+)", re.IGNORECASE)
#: ``user:secret@`` in a URI, also percent-encoded (``%3A`` / ``%40``) and without its scheme
#: (pyarrow quotes the authority alone: ``got a URI: 'AKIA:SECRET@bucket/x'``)
_USERINFO = re.compile(r"(?<![\w%])[\w.~+\-%]+(?::|%3A)[^\s/@'\"]*(?:@|%40)", re.IGNORECASE)
_SCHEME_USER = re.compile(r"(\b[a-z][a-z0-9+.\-]*://)[^\s/@'\"]+(?:@|%40)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the credentials of any URI in it replaced by ``***``: the user-info of
    ``s3://AKIA:SECRET@bucket/x`` (plain or percent-encoded, with or without the scheme) and
    the values of credential query parameters (``?secret_key=…``, ``X-Amz-Signature=…``).

    Every error line and log record of the commands goes through it (:func:`one_line`,
    :class:`RedactingFilter`), so a secret a user put in a URI is never printed or stored.
    """
    text = _SCHEME_USER.sub(r"\1***@", text)
    text = _USERINFO.sub("***@", text)
    return _QUERY_SECRET.sub(r"\1***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that applies :func:`redact` to each record's formatted message and
    traceback (add it to a handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:  # a traceback (-v) quotes the messages too
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
