"""Ray's own log lines, hidden unless the user asked for them (``multishot -v``).

Without ``-v`` (the root logger not at DEBUG), Ray's Python loggers (``ray``, ``ray.data``) show
errors only: the lines a user cannot act on go ("Token authentication is enabled…", "Started a
local Ray instance", Ray Data's execution plan and "Progress bars disabled…"), and so does Ray
Data's ``UserWarning`` about the maximum number of concurrent tasks. The pipeline's own loggers
(``multishot.*``) and its workers' output (``log_to_driver``) are untouched.
"""

from __future__ import annotations

import logging
import warnings

#: Ray's Python loggers quieted without -v
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


def verbose() -> bool:
    """Whether the user asked for debug output (``multishot -v`` sets the root logger to DEBUG)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def ray_logging_level() -> int:
    """The ``logging_level`` for ``ray.init``: INFO with ``-v``, else ERROR."""
    return logging.INFO if verbose() else logging.ERROR


def quiet_ray() -> None:
    """Without ``-v``: Ray's loggers to ERROR and its concurrency warning off. Call after
    ``import ray`` and again after ``import ray.data`` (each import configures its logger)."""
    if verbose():
        return
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*maximum number of concurrent tasks.*")
