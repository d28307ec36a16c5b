"""Fault tests of the chat-completions client against misbehaving loopback servers: a server that
trickles its answer one byte every 0.5 s (body or headers) must not keep a request alive past its
``timeout_s`` deadline; the retry policy then applies. The servers stop by themselves (bounded loops)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from dtwinseg.openai_chat import ChatClientConfig, ChatCompletionsClient, ChatCompletionsError

ANSWER = json.dumps({"choices": [{"message": {"content": "Answer: [0]"}}]}).encode()


def _read_request(conn: socket.socket) -> None:
    """Read one HTTP request (headers, then Content-Length bytes of body) from ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


class TrickleServer:
    """Accepts connections on 127.0.0.1; for each, reads the request, then sends the reply one byte per
    ``interval_s`` (the headers too when ``trickle_headers``), at most ``max_bytes`` bytes, and gives up on
    a closed peer. Counts connections."""

    def __init__(self, interval_s: float = 0.5, trickle_headers: bool = False, max_bytes: int = 60):
        self.interval_s, self.trickle_headers, self.max_bytes = interval_s, trickle_headers, max_bytes
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._reply, args=(conn,), daemon=True).start()

    def _reply(self, conn: socket.socket) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(ANSWER)}\r\n\r\n"
                ).encode()
        with conn:
            conn.settimeout(2.0)
            try:
                _read_request(conn)  # all of it: unread bytes at close would reset the connection
                if not self.trickle_headers:
                    conn.sendall(head)
                payload = (head if self.trickle_headers else b"") + ANSWER
                for k in range(min(len(payload), self.max_bytes)):
                    if self.stop.is_set():
                        return
                    conn.sendall(payload[k:k + 1])
                    time.sleep(self.interval_s)
            except OSError:
                return

    def __enter__(self) -> TrickleServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.parametrize("trickle_headers", [False, True], ids=["body", "headers"])
def test_trickling_server_fails_after_the_whole_request_deadline_then_retries(trickle_headers):
    sleeps: list[float] = []
    with TrickleServer(trickle_headers=trickle_headers) as srv:
        client = ChatCompletionsClient(ChatClientConfig(base_url=srv.url, model="m", api_key_envs=(),
                                                        timeout_s=1.0, max_retries=1, jitter=(1.0, 1.0)),
                                       sleep=sleeps.append)
        t0 = time.monotonic()
        with pytest.raises(ChatCompletionsError) as err:
            client.complete([{"role": "user", "content": "hi"}])
        elapsed = time.monotonic() - t0
    # two attempts of at most 1 s each (the server would need ~30 s per answer)
    assert elapsed < 3.5, elapsed
    assert err.value.kind == "network" and err.value.retried_out and "timed out" in str(err.value)
    assert client.stats == {"requests": 2, "retries": 1, "failures": 1} and sleeps == [1.0]
    assert srv.connections == 2


def test_fast_server_under_the_deadline_answers():
    with TrickleServer(interval_s=0.0, max_bytes=10_000) as srv:
        client = ChatCompletionsClient(ChatClientConfig(base_url=srv.url, model="m", api_key_envs=(),
                                                        timeout_s=5.0, max_retries=0))
        assert client.complete([{"role": "user", "content": "hi"}]) == "Answer: [0]"


def test_requests_go_through_the_environment_proxy_with_its_credentials(monkeypatch):
    from tests.perception_helpers import ChatServer

    seen: list[str] = []

    with ChatServer(default=(200, "via proxy")) as proxy:  # a forward proxy that answers itself
        port = proxy.httpd.server_address[1]
        for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", f"http://user:p%40ss@127.0.0.1:{port}")
        handler = proxy.httpd.RequestHandlerClass
        original = handler.do_POST

        def record(self):
            seen.append(f"{self.path} {self.headers.get('Proxy-Authorization', '')}")
            original(self)

        handler.do_POST = record
        client = ChatCompletionsClient(ChatClientConfig(base_url="http://api.example.invalid/v1", model="m",
                                                        api_key_envs=(), timeout_s=5.0, max_retries=0))
        assert client.complete([{"role": "user", "content": "hi"}]) == "via proxy"
    assert seen == ["http://api.example.invalid/v1/chat/completions Basic dXNlcjpwQHNz"]  # user:p@ss
