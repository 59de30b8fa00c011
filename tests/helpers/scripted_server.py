"""What the loopback stand-ins of remote services share (``gemini_server``, ``openai_server``):
an HTTP server on 127.0.0.1 (a free port) in a thread, started and stopped as a context manager,
the recorded requests, a script of actions answered in order (a default reply when it runs
out), and the most requests in flight at once."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Action = tuple  # (kind, *args), made by each stand-in's helpers


class ScriptedServer:
    """Base of a stand-in: subclasses give :meth:`_handler` and :meth:`default_action`, and
    serve under ``base_url`` (``http://127.0.0.1:PORT`` + ``path``)."""

    def __init__(self, path: str = ""):
        self.requests: list[dict] = []
        self._script: deque[Action] = deque()
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def queue(self, *actions: Action) -> None:
        """Answer the next requests with ``actions``, in order."""
        with self._lock:
            self._script.extend(actions)

    def default_action(self) -> Action:
        """The answer once the script has run out."""
        raise NotImplementedError

    def _next_action(self) -> Action:
        with self._lock:
            return self._script.popleft() if self._script else self.default_action()

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count one request being answered (:attr:`max_in_flight`)."""
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError
