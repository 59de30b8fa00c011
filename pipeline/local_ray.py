"""Connecting to Ray: a private local Ray on 127.0.0.1, or the cluster of a ``ray job submit``.

``ray.init()`` without an address does not start a private Ray: it first joins whatever cluster
``$TMPDIR/ray/ray_current_cluster`` names (Ray 2.x ``services.get_ray_address_from_environment``;
``/tmp/ray`` is world-writable, so another user's ``ray start`` captures the job, and a stale file
makes ``ray.init`` wait forever). ``ray.init(address="local")`` always starts a new cluster
(``services.canonicalize_bootstrap_address``: ``"local"`` → start one) and never reads that file.

Where its processes listen follows the node address: Ray's "no cluster" mode
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, ``ray_constants.ENABLE_RAY_CLUSTER``) makes the node
address 127.0.0.1, and the GCS, raylet, workers and agents then bind loopback only; with the
machine's address they bind every interface. ``_node_ip_address="127.0.0.1"`` is no help: Ray
rewrites a loopback address to the external one (``services.resolve_ip_for_localhost``). The
environment variable is read when ray is first imported, so :func:`init_ray` sets both the
variable (inherited by every process Ray starts) and, if ray was imported already, the constant.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: Ray's switch for its no-cluster (loopback) mode, read at import (ray._private.ray_constants)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def job_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address`` if given, else ``RAY_ADDRESS`` (set by ``ray job
    submit`` for its entrypoint), else None (start a private local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def loopback_mode() -> None:
    """Put Ray in its no-cluster mode (node address 127.0.0.1) for this process and for every
    process it starts; effective even when ray was imported already."""
    os.environ[LOOPBACK_ENV] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None = None, **init_kwargs) -> bool:
    """Join the job's cluster (:func:`job_address`) or start a private local Ray bound to
    127.0.0.1; returns True when this call started one (the caller shuts it down).

    ``init_kwargs`` (``num_cpus``, ``include_dashboard``, ...) go to a local ``ray.init``
    only. An already initialised Ray is used as it is (returns False).
    """
    import ray

    if ray.is_initialized():
        return False
    joined = job_address(address)
    if joined:
        ray.init(address=joined, log_to_driver=True)
        log.info("joined the Ray cluster at %s", joined)
        return False
    loopback_mode()
    context = ray.init(address="local", **init_kwargs)
    log.info("started a private local Ray on 127.0.0.1 (GCS %s, session %s); no other cluster joined",
             context.address_info.get("gcs_address"), context.address_info.get("session_dir"))
    return True
