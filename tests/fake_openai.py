"""A slow streaming OpenAI-compatible upstream on 127.0.0.1, for the LiteLLM tests that
LiteLLM's mock responses cannot serve: streams cut off by the client or by the upstream. (A
mock stream yields all its chunks without waiting, so it ends before a disconnect can be
noticed, and it cannot break in the middle.)

The stream is HTTP/1.1 chunked, so an upstream cut (the request header `x-fake-cut-after: N`:
the connection drops after N chunks, inside the next one) is a protocol error for the client,
not a clean end of the body."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.http_support import free_port

CHUNKS = 200
CHUNK_TEXT = " token"  # one token in the tokenizers LiteLLM uses for OpenAI models
CHUNK_INTERVAL_S = 0.03


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI.HttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: pytest shows failures, not every request

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        cut_after = int(self.headers.get("x-fake-cut-after", "0"))
        sent = 0
        try:
            for index in range(CHUNKS):  # bounded: at most CHUNKS * CHUNK_INTERVAL_S
                if cut_after and sent == cut_after:
                    self.wfile.write(b"400\r\ndata: {")  # a chunk that never ends
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
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
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")  # the last chunk
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy went away: the stream was cut
        finally:
            self.server.streams_sent.append(sent)

    def _event(self, payload: dict[str, object]) -> None:
        self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
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
