"""A slow streaming OpenAI-compatible upstream on 127.0.0.1, for the one LiteLLM test that
LiteLLM's mock responses cannot serve: a stream the client cuts off. (A mock stream yields all
its chunks without waiting, so it ends before a disconnect can be noticed.)"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.http_support import free_port

CHUNKS = 200
CHUNK_TEXT = "token "
CHUNK_INTERVAL_S = 0.03


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI.HttpServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: pytest shows failures, not every request

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        sent = 0
        try:
            for index in range(CHUNKS):  # bounded: at most CHUNKS * CHUNK_INTERVAL_S
                delta = {"role": "assistant", "content": CHUNK_TEXT} if index == 0 else {
                    "content": CHUNK_TEXT}
                self._event({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                             "created": int(time.time()), "model": body.get("model", "fake"),
                             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                sent += 1
                time.sleep(CHUNK_INTERVAL_S)
            self._event({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                         "created": int(time.time()), "model": body.get("model", "fake"),
                         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy went away: the stream was cut
        finally:
            self.server.streams_sent.append(sent)

    def _event(self, payload: dict[str, object]) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()


class FakeOpenAI:
    class HttpServer(ThreadingHTTPServer):
        daemon_threads = True
        streams_sent: list[int]

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = self.HttpServer(("127.0.0.1", self.port), _Handler)
        self._server.streams_sent = []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def streams_sent(self) -> list[int]:
        """Chunks written per finished request, in finishing order."""
        return self._server.streams_sent

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
