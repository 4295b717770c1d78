"""The TensorBoard gate (``hpcstack.studio.tensorboard_gate``): its WSGI middleware served
by the standard library's own server and attacked over real HTTP. A tiny WSGI app stands
in for TensorBoard here; the end-to-end test (test_studio_e2e) runs the gate with the real
TensorBoard in its image, under Slurm."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from hpcstack.studio import tensorboard_gate
from hpcstack.studio.tensorboard_gate import PasswordGate, split_args

COOKIE = "tensorboard_6006"


def board(environ, start_response):  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"runs at {environ['PATH_INFO']}".encode()]


class Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.fixture()
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, PasswordGate]]:
    monkeypatch.setattr(tensorboard_gate, "WRONG_DELAY", 0.0)
    app = PasswordGate(board, "s3cret", cookie=COOKIE)
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, app
    server.shutdown()
    server.server_close()


def request(port: int, method: str, path: str, body: str = "",
            headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    conn.request(method, path, body=body.encode() if body else None, headers=hdrs)
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    return resp


def login(port: int, password: str) -> http.client.HTTPResponse:
    return request(port, "POST", "/login", f"password={password}")


def test_right_password_sets_the_cookie_that_opens_tensorboard(gate) -> None:  # type: ignore[no-untyped-def]
    port, _ = gate
    resp = login(port, "s3cret")
    assert resp.status == 303 and resp.getheader("Location") == "./"
    cookie = resp.getheader("Set-Cookie")
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "Path" not in cookie
    value = cookie.split(";")[0]
    ok = request(port, "GET", "/data/plugin/scalars/tags", headers={"Cookie": value})
    assert ok.status == 200 and ok.body == b"runs at /data/plugin/scalars/tags"


def test_a_stranger_gets_nothing_of_tensorboard(gate) -> None:  # type: ignore[no-untyped-def]
    """Another user on the node, with no password, a wrong one, or a forged cookie."""
    port, app = gate
    front = request(port, "GET", "/")
    assert front.status == 401 and b'action="login"' in front.body
    assert b"runs at" not in front.body
    assert request(port, "GET", "/data/runs").status == 401
    wrong = login(port, "guess")
    assert wrong.status == 403 and b"Wrong password." in wrong.body
    assert wrong.getheader("Set-Cookie") is None
    assert login(port, "").status == 403
    assert login(port, "s3cret" + "x").status == 403
    for forged in (f"{COOKIE}=", f"{COOKIE}=guess", f"other={app.token}",
                   f"{COOKIE}={app.token[:-1]}", 'bad"cookie', f"{COOKIE}=\u00e9t\u00e9"):
        assert request(port, "GET", "/data/runs", headers={"Cookie": forged}).status == 401
    other_start = PasswordGate(board, "s3cret", cookie=COOKIE)
    stale = f"{COOKIE}={other_start.token}"  # a cookie from an earlier session
    assert request(port, "GET", "/data/runs", headers={"Cookie": stale}).status == 401


def test_an_oversized_login_form_is_refused(gate) -> None:  # type: ignore[no-untyped-def]
    port, _ = gate
    resp = request(port, "POST", "/login", "password=" + "x" * 5000)
    assert resp.status == 413


def test_the_gate_needs_a_password() -> None:
    with pytest.raises(ValueError):
        PasswordGate(board, "", cookie=COOKIE)
    with pytest.raises(SystemExit, match="--password-file FILE is required"):
        split_args(["--logdir", "/logs"])
    assert split_args(["--password-file", "/w/p", "--logdir", "/logs", "--port", "1"]) == (
        "/w/p", ["--logdir", "/logs", "--port", "1"])
    assert split_args(["--password-file=/w/p", "--host", "0.0.0.0"]) == (
        "/w/p", ["--host", "0.0.0.0"])


def test_an_empty_password_file_stops_the_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "passwd"
    empty.write_text("\n")
    with pytest.raises(SystemExit, match="empty password"):
        tensorboard_gate.main(["--password-file", str(empty), "--logdir", "/logs"])
