"""Fail fast on a Ray cluster that cannot be reached.

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

import os
import socket
import sys

from multishot.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
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
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved = canonicalize_bootstrap_address(address)
    except Exception as err:  # Ray raises ConnectionError / ValueError with its own words
        raise UsageError(f"Ray address {address!r}: {err}") from None
    if resolved is None:
        return None
    host, _, port = resolved.rpartition(":")
    return host.strip("[]"), int(port)


def check_reachable(address: str | None, timeout_s: float | None = None) -> None:
    """Return when the cluster at ``address`` (else ``RAY_ADDRESS``) accepts a TCP connection
    within ``timeout_s`` (default :data:`DEFAULT_TIMEOUT_S`, or ``MULTISHOT_RAY_CONNECT_TIMEOUT_S``);
    no address: nothing to check (a local Ray will be started).

    Raises:
        UsageError: the address is malformed, names no running cluster, or does not answer.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return
    if timeout_s is None:
        timeout_s = float(os.environ.get("MULTISHOT_RAY_CONNECT_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    endpoint = gcs_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UsageError(
            f"cannot reach the Ray cluster at {host}:{port} (address {address!r}) within {timeout_s:g} s: "
            f"{reason}; is a head running there (`ray start --head`)?") from None
