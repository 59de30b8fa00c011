"""A stand-in OpenAI-compatible chat endpoint on loopback for tests: the REST route the ``openai``
client calls, as vLLM / SGLang serve it for a vision-language model.

Speaks ``POST /v1/chat/completions``: checks the request is what a captioning call must be
(``Authorization: Bearer KEY``, else 401; the model name; a first user message whose content
parts hold images, ``image_url`` parts with base64 JPEG ``data:`` URLs that decode, or one
``video_url`` part with an mp4 data URL; a ``response_format`` of type ``json_schema`` unless
the server was made to refuse it, which it then does with 400 as a server without guided
decoding would), then answers from a script of queued actions, or by default with a valid
caption reply for as many shots as the prompt's ``Shot i:`` lines list. ``usage`` counts
prompt tokens as 1000 per image or video plus one per prompt word and completion tokens as
the reply's whitespace-separated words: a stand-in's counts, not a tokenizer's.

Each request is recorded in :attr:`OpenAIServer.requests` (arrival time, headers, JSON body);
decoded images (PIL) in :attr:`OpenAIServer.images`; :attr:`OpenAIServer.max_in_flight` is
the most requests served at once. The server binds 127.0.0.1 on a free port; use it as a
context manager so it is stopped.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlparse

from scripted_server import Action, ScriptedServer

from PIL import Image

from gemini_server import caption_json, error, reply, reply_text, stall  # noqa: F401 (the same script actions)


_SHOT_LINE = re.compile(r"^Shot (\d+): ", re.MULTILINE)
_DATA_URL = re.compile(r"^data:([a-z]+/[a-z0-9.+-]+);base64,(.+)$", re.DOTALL)


def garbage(body: bytes = b"<html>502 Bad Gateway</html>") -> Action:
    """Answer 200 with a body that is not a chat completion (a broken proxy in between)."""
    return ("garbage", body)


def no_choices() -> Action:
    """Answer 200 with a completion holding no choices."""
    return ("no_choices",)


class OpenAIServer(ScriptedServer):
    """The stand-in endpoint. ``queue(*actions)`` scripts the next answers."""

    def __init__(self, api_key: str | None, model: str, *, json_schema: bool = True):
        """``api_key``: the bearer token required (None: any); ``json_schema``: False refuses
        ``response_format`` json_schema with 400."""
        self.api_key = api_key
        self.model = model
        self.json_schema = json_schema
        self.images: list[Image.Image] = []
        self.videos: list[bytes] = []
        super().__init__("/v1")

    def default_action(self) -> Action:
        return reply()

    def chat_requests(self) -> list[dict]:
        """The recorded chat-completions requests (their JSON bodies under ``"json"``)."""
        return [r for r in self.requests if r["path"] == "/v1/chat/completions"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send_bytes(self, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def _send(self, status: int, body: object, headers: dict | None = None) -> None:
                self._send_bytes(status, json.dumps(body).encode(), "application/json", headers)

            def _error(self, status: int, message: str, headers: dict | None = None) -> None:
                kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                         429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}
                body = {"error": {"message": message, "type": kinds.get(status, "server_error"),
                                  "param": None, "code": status}}
                self._send(status, body, headers)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                entry = {"t": time.monotonic(), "method": "POST", "path": urlparse(self.path).path,
                         "headers": {k.lower(): v for k, v in self.headers.items()}, "raw": raw}
                try:
                    entry["json"] = json.loads(raw)
                except ValueError:
                    entry["json"] = None
                with server._lock:
                    server.requests.append(entry)
                if server.api_key is not None and entry["headers"].get("authorization") != f"Bearer {server.api_key}":
                    return self._error(401, "Incorrect API key provided")
                if entry["path"] != "/v1/chat/completions":
                    return self._error(404, f"no route POST {entry['path']}")
                self._chat(entry["json"] or {})

            def _chat(self, body: dict) -> None:
                if body.get("model") != server.model:
                    return self._error(404, f"The model `{body.get('model')}` does not exist.")
                fmt = body.get("response_format")
                if fmt is not None and not server.json_schema:
                    return self._error(400, "response_format json_schema is not supported by this server")
                if server.json_schema and (not fmt or fmt.get("type") != "json_schema"
                                           or "schema" not in fmt.get("json_schema", {})):
                    return self._error(400, "expected response_format json_schema")
                messages = body.get("messages") or [{}]
                first = messages[0]
                parts = first.get("content") if first.get("role") == "user" else None
                if not isinstance(parts, list):
                    return self._error(400, "expected a user message with content parts")
                media = 0
                for part in parts:
                    kind = part.get("type")
                    if kind in ("image_url", "video_url"):
                        m = _DATA_URL.match(part.get(kind, {}).get("url", ""))
                        want = "image/jpeg" if kind == "image_url" else "video/mp4"
                        if not m or m.group(1) != want:
                            return self._error(400, f"expected a base64 {want} data URL in {kind}")
                        data = base64.b64decode(m.group(2), validate=True)
                        if kind == "image_url":
                            try:
                                image = Image.open(io.BytesIO(data))
                                image.load()
                            except OSError as err:
                                return self._error(400, f"cannot decode image: {err}")
                            with server._lock:
                                server.images.append(image)
                        else:
                            with server._lock:
                                server.videos.append(data)
                        media += 1
                    elif kind != "text":
                        return self._error(400, f"unknown content part type {kind!r}")
                if not media:
                    return self._error(400, "expected image or video parts")
                prompt = "\n".join(p.get("text", "") for p in parts if p.get("type") == "text")
                with server.in_flight():
                    self._answer(prompt, 1000 * media + len(prompt.split()))

            def _answer(self, prompt: str, prompt_tokens: int) -> None:
                action = server._next_action()
                kind = action[0]
                if kind == "error":
                    _, status, retry_after, message = action
                    return self._error(status, message, {"Retry-After": retry_after} if retry_after else None)
                if kind == "garbage":
                    return self._send_bytes(200, action[1], "application/json")
                if kind == "stall":
                    time.sleep(action[1])
                    action = reply()
                completion = {"id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()),
                              "model": server.model, "choices": []}
                text = ""
                if action[0] != "no_choices":
                    text = action[1] if action[0] == "text" else caption_json(action[1] or len(_SHOT_LINE.findall(prompt)))
                    completion["choices"] = [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                              "message": {"role": "assistant", "content": text}}]
                words = len(text.split())
                completion["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": words,
                                       "total_tokens": prompt_tokens + words}
                self._send(200, completion)

        return Handler
