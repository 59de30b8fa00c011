"""A stand-in Gemini service on loopback for tests: the REST routes the google-genai SDK calls.

Speaks, on both ``/v1`` and ``/v1beta``:

* ``POST /{v}/models/{model}:generateContent``: checks the request is what a captioning call
  must be (a video part, inline base64 or a ``fileData`` URI of an ACTIVE upload; JSON reply
  mime type; a response schema), then answers from a script of queued actions, or by default
  with a valid caption reply for as many shots as the prompt's ``Shot i:`` lines list.
* Files API: ``POST /upload/{v}/files`` (``X-Goog-Upload-Protocol: resumable``, command
  ``start``) answers an **absolute** ``X-Goog-Upload-URL``; chunks are posted there with
  ``X-Goog-Upload-Command: upload[, finalize]`` and ``X-Goog-Upload-Offset``; the file then
  reads ``PROCESSING`` for ``processing_polls`` ``GET /{v}/files/{id}`` calls, then ``ACTIVE``;
  ``DELETE /{v}/files/{id}`` removes it.

Every request but the upload chunks (authorised by their ``upload_id``) must carry the
expected ``x-goog-api-key`` (403 otherwise). Each request is
recorded in :attr:`GeminiServer.requests` (with its arrival time); decoded videos in
:attr:`GeminiServer.videos`; :attr:`GeminiServer.max_in_flight` is the most generateContent
calls served at once.
The server binds 127.0.0.1 on a free port; use it as a context manager so it is stopped.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from scripted_server import Action, ScriptedServer


_GENERATE = re.compile(r"^/(v1|v1beta)/models/([^/:]+):generateContent$")
_UPLOAD = re.compile(r"^/upload/(v1|v1beta)/files$")
_FILE = re.compile(r"^/(v1|v1beta)/(files/[a-z0-9-]+)$")
_SHOT_LINE = re.compile(r"^Shot (\d+): ", re.MULTILINE)


def _field(obj: dict, name: str):
    """``obj[name]`` under its lowerCamelCase or snake_case name: proto JSON accepts both, and the
    SDK sends nested fields (``fileData.file_uri``) snake_case."""
    snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)
    return obj.get(name, obj.get(snake))


def error(status: int, retry_after: str | None = None, message: str = "stand-in error") -> Action:
    """Answer with an HTTP error in Google's JSON error format, optionally with Retry-After."""
    return ("error", status, retry_after, message)


def reply_text(text: str) -> Action:
    """Answer 200 with a candidate whose only part is ``text`` (malformed JSON, wrong counts …)."""
    return ("text", text)


def reply(num_shots: int | None = None) -> Action:
    """Answer 200 with a valid caption reply (``num_shots`` overrides the prompt's shot count)."""
    return ("reply", num_shots)


def stall(seconds: float) -> Action:
    """Wait ``seconds`` before answering with a valid reply (to trip a client timeout)."""
    return ("stall", seconds)


def caption_json(num_shots: int) -> str:
    """A valid reply for ``num_shots`` shots, with character tags used consistently."""
    return json.dumps({
        "global_caption": "[character1], a girl in a brown cloak, and [character2], a small dragon, "
        "cross a snowy mountain pass under a grey sky.",
        "shot_captions": [
            {"shot": i + 1, "caption": f"Medium shot {i + 1}, static camera: [character{1 + i % 2}] moves forward."}
            for i in range(num_shots)
        ],
    })


@dataclass
class _File:
    name: str
    mime_type: str
    size: int
    data: bytearray = field(default_factory=bytearray)
    polls: int = 0
    final: bool = False


class GeminiServer(ScriptedServer):
    """The stand-in service. ``queue(*actions)`` scripts the next generateContent answers."""

    def __init__(self, api_key: str, processing_polls: int = 1):
        self.api_key = api_key
        self.processing_polls = processing_polls
        self.videos: list[bytes] = []
        self.files: dict[str, _File] = {}
        self.deleted: list[str] = []
        self._uploads = 0
        super().__init__()

    def default_action(self) -> Action:
        return reply()

    def generate_requests(self) -> list[dict]:
        """The recorded generateContent requests (their JSON bodies under ``"json"``)."""
        return [r for r in self.requests if r["path"].endswith(":generateContent")]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's httpx client expects

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: object = None, headers: dict | None = None) -> None:
                data = json.dumps({} if body is None else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def _error(self, status: int, message: str, headers: dict | None = None) -> None:
                names = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                         429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
                body = {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}
                self._send(status, body, headers)

            def _record(self) -> dict | None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                entry = {"t": time.monotonic(), "method": self.command, "path": url.path, "query": url.query,
                         "headers": {k.lower(): v for k, v in self.headers.items()}, "raw": raw}
                try:
                    entry["json"] = json.loads(raw) if raw and "upload_id" not in self.path else None
                except ValueError:
                    entry["json"] = None
                with server._lock:
                    server.requests.append(entry)
                # the upload URL's upload_id authorises chunk posts (the SDK sends no key there)
                if self.headers.get("x-goog-api-key") != server.api_key and "upload_id=" not in entry["query"]:
                    self._error(403, "API key not valid")
                    return None
                return entry

            def do_POST(self) -> None:
                entry = self._record()
                if entry is None:
                    return
                path = entry["path"]
                if m := _GENERATE.match(path):
                    return self._generate(entry, m.group(2))
                if _UPLOAD.match(path) and "upload_id" in entry["query"]:
                    return self._chunk(entry)
                if m := _UPLOAD.match(path):
                    return self._start_upload(entry, m.group(1))
                self._error(404, f"no route POST {path}")

            def do_GET(self) -> None:
                entry = self._record()
                if entry is None:
                    return
                m = _FILE.match(entry["path"])
                file = server.files.get(m.group(2)) if m else None
                if file is None or not file.final:
                    return self._error(404, f"no file {entry['path']}")
                file.polls += 1
                self._send(200, self._file_json(file))

            def do_DELETE(self) -> None:
                entry = self._record()
                if entry is None:
                    return
                m = _FILE.match(entry["path"])
                if not m or server.files.pop(m.group(2), None) is None:
                    return self._error(404, f"no file {entry['path']}")
                server.deleted.append(m.group(2))
                self._send(200, {})

            def _file_json(self, file: _File) -> dict:
                state = "ACTIVE" if file.polls > server.processing_polls else "PROCESSING"
                return {"name": file.name, "mimeType": file.mime_type, "sizeBytes": str(file.size),
                        "uri": f"{server.base_url}/v1beta/{file.name}", "state": state}

            def _start_upload(self, entry: dict, version: str) -> None:
                h = entry["headers"]
                if h.get("x-goog-upload-protocol") != "resumable" or h.get("x-goog-upload-command") != "start":
                    return self._error(400, "expected a resumable upload start")
                with server._lock:
                    server._uploads += 1
                    name = f"files/standin-{server._uploads}"
                server.files[name] = _File(name, h.get("x-goog-upload-header-content-type", ""),
                                           int(h.get("x-goog-upload-header-content-length", "0")))
                url = f"{server.base_url}/upload/{version}/files?upload_id={name.split('/')[1]}&upload_protocol=resumable"
                self._send(200, {}, {"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})

            def _chunk(self, entry: dict) -> None:
                upload_id = parse_qs(entry["query"])["upload_id"][0]
                file = server.files.get(f"files/{upload_id}")
                h = entry["headers"]
                if file is None or int(h.get("x-goog-upload-offset", -1)) != len(file.data):
                    return self._error(400, "unknown upload or wrong offset")
                file.data += entry["raw"]
                if "finalize" not in h.get("x-goog-upload-command", ""):
                    return self._send(200, {}, {"X-Goog-Upload-Status": "active"})
                if len(file.data) != file.size:
                    return self._error(400, f"got {len(file.data)} bytes, announced {file.size}")
                file.final = True
                server.videos.append(bytes(file.data))
                self._send(200, {"file": self._file_json(file)}, {"X-Goog-Upload-Status": "final"})

            def _generate(self, entry: dict, model: str) -> None:
                body = entry["json"] or {}
                gen = body.get("generationConfig", {})
                if gen.get("responseMimeType") != "application/json" or not (
                    gen.get("responseSchema") or gen.get("responseJsonSchema")
                ):
                    return self._error(400, "expected a JSON response schema")
                first = body.get("contents", [{}])[0].get("parts", [])
                video = [p for p in first if _field(p, "inlineData") or _field(p, "fileData")]
                prompt = "\n".join(p.get("text", "") for p in first)
                if len(video) != 1:
                    return self._error(400, "expected one video part")
                if inline := _field(video[0], "inlineData"):
                    if _field(inline, "mimeType") != "video/mp4":
                        return self._error(400, "expected video/mp4")
                    with server._lock:  # the SDK sends the URL-safe base64 alphabet
                        server.videos.append(base64.urlsafe_b64decode(inline["data"]))
                else:
                    name = _field(_field(video[0], "fileData"), "fileUri").split("/v1beta/", 1)[-1]
                    file = server.files.get(name)
                    if file is None or file.polls <= server.processing_polls:
                        return self._error(400, f"file {name} is not ACTIVE")
                with server.in_flight():
                    self._answer(model, prompt)

            def _answer(self, model: str, prompt: str) -> None:
                action = server._next_action()
                kind = action[0]
                if kind == "error":
                    _, status, retry_after, message = action
                    return self._error(status, message, {"Retry-After": retry_after} if retry_after else None)
                if kind == "stall":
                    time.sleep(action[1])
                    action = reply()
                if action[0] == "text":
                    text = action[1]
                else:
                    text = caption_json(action[1] or len(_SHOT_LINE.findall(prompt)))
                self._send(200, {
                    "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 100},
                    "modelVersion": model,
                })

        return Handler
