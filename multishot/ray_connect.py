"""Connecting to Ray: a private local Ray on 127.0.0.1, or the cluster of a ``ray job submit``,
and a fast failure when that cluster cannot be reached.

Connecting to Ray: a private local Ray on 127.0.0.1, or the cluster of a ``ray job submit``.

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


``ray.init(address=...)`` has no timeout: against an address nobody listens on (a stale
``/tmp/ray/ray_current_cluster`` behind ``auto``, a typo, a head on another interface) it logs
"Failed to connect to GCS at address …" again and again and never returns. Before joining a
cluster, :func:`check_reachable` resolves the address as Ray does
(``ray._private.services.canonicalize_bootstrap_address``: ``RAY_ADDRESS``, ``auto``) and opens
one TCP connection to its GCS port (or Ray Client port for ``ray://``) under a timeout.

A loopback address (``127.0.0.1:6379``, a head started with ``--node-ip-address 127.0.0.1``)
is kept on loopback: Ray would otherwise rewrite it to this machine's network address
(``resolve_ip_for_localhost``) and never find the head; its "no cluster" mode
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) keeps it, when set before Ray is imported.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from multishot.errors import UsageError

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Ray's switch for its no-cluster (loopback) mode, read at import (ray._private.ray_constants)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: seconds to wait for the cluster's port to accept a connection (env MULTISHOT_RAY_CONNECT_TIMEOUT_S)
DEFAULT_TIMEOUT_S = 10.0


def gcs_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` that ``ray.init(address=address)`` would connect to first, or None when
    it would start a local Ray (``local``).

    Raises:
        UsageError: the address is malformed, or ``auto`` finds no running cluster.
    """
    if address == "local" or address.startswith(("http://", "https://")):  # a job server's, not ray.init's
        return None
    if address.startswith("ray://"):
        host, _, port = address[len("ray://"):].partition("/")[0].rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"Ray address {address!r}: expected ray://HOST:PORT")
        return host, int(port)
    host = address.rpartition(":")[0].strip("[]")
    if host in LOOPBACK and "ray" not in sys.modules:
        # Ray rewrites a loopback address to this machine's network address (a head started on
        # 127.0.0.1 is then never found) unless its "no cluster" mode is on, read at import
        os.environ.setdefault(LOOPBACK_ENV, "0")
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved = canonicalize_bootstrap_address(address)
    except Exception as err:  # Ray raises ConnectionError / ValueError with its own words
        raise UsageError(f"Ray address {address!r}: {err}") from None
    if resolved is None:
        return None
    host, _, port = resolved.rpartition(":")
    return host.strip("[]"), int(port)


def check_reachable(address: str | None, timeout_s: float | None = None) -> tuple[str, int] | None:
    """Return when the cluster at ``address`` (else ``RAY_ADDRESS``) accepts a TCP connection
    within ``timeout_s`` (default :data:`DEFAULT_TIMEOUT_S`, or ``MULTISHOT_RAY_CONNECT_TIMEOUT_S``);
    no address: nothing to check (a local Ray will be started). Returns the ``(host, port)``
    checked, or None.

    Raises:
        UsageError: the address is malformed, names no running cluster, or does not answer.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return None
    if timeout_s is None:
        timeout_s = float(os.environ.get("MULTISHOT_RAY_CONNECT_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    endpoint = gcs_endpoint(address)
    if endpoint is None:
        return None
    host, port = endpoint
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UsageError(
            f"cannot reach the Ray cluster at {host}:{port} (address {address!r}) within {timeout_s:g} s: "
            f"{reason}; is a head running there (`ray start --head`)?") from None
    return endpoint


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


def init_ray(address: str | None = None, *, logging_level: int = logging.INFO,
             **local_kwargs) -> bool:
    """Join the job's cluster (:func:`job_address`, checked with :func:`check_reachable`) or
    start a private local Ray bound to 127.0.0.1; returns True when this call started one (the
    caller shuts it down).

    ``local_kwargs`` (``num_cpus``, ``include_dashboard``, ...) go to a local ``ray.init``
    only. An already initialised Ray is used as it is (returns False).

    Raises:
        UsageError: the cluster to join is malformed or does not answer.
    """
    import ray

    if ray.is_initialized():
        return False
    joined = job_address(address)
    if joined:
        endpoint = check_reachable(joined)  # ray.init would retry an unreachable address forever
        if endpoint is not None and endpoint[0] in LOOPBACK:
            loopback_mode()  # else Ray rewrites the loopback head's address and never finds it
        ray.init(address=joined, log_to_driver=True, logging_level=logging_level)
        log.info("joined the Ray cluster at %s", joined)
        return False
    loopback_mode()
    context = ray.init(address="local", logging_level=logging_level, **local_kwargs)
    log.info("started a private local Ray on 127.0.0.1 (GCS %s, session %s); no other cluster joined",
             context.address_info.get("gcs_address"), context.address_info.get("session_dir"))
    return True
