"""TensorBoard behind the session's password, inside TensorBoard's own process.

TensorBoard has no login: anyone who can reach the compute node's port could read the
runs. ``hpcstack studio generate`` stages this file beside each TensorBoard session, and
the app's script runs it with the image's ``python3`` instead of ``tensorboard``::

    python3 tensorboard_gate.py --password-file FILE --logdir /logs --host 0.0.0.0 --port P

It starts TensorBoard through its documented ``program.TensorBoard(server_class=...)``
hook, with :class:`PasswordGate` wrapped around TensorBoard's WSGI app, so no port is
ever open without the password (a proxy in front would leave TensorBoard's own port
open to every user on the node). ``POST login`` with the password sets a cookie; every
other request needs it. The file uses the standard library only, since it runs on
whatever Python the site's TensorBoard image has.
"""

import hmac
import html
import secrets
import sys
import time
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

MAX_FORM = 4096  # bytes of a login form; more is refused
WRONG_DELAY = 1.0  # seconds a wrong password waits, to slow guessing

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TensorBoard: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 30em; margin: 3em auto">
<h1>TensorBoard</h1>
{message}<form method="post" action="login">
<label for="password">Session password</label>
<input id="password" name="password" type="password" autofocus required>
<button type="submit">Log in</button>
</form></body></html>
"""


class PasswordGate:
    """WSGI middleware: every request needs the session cookie, which ``POST /login`` with
    the right password sets (a random token, new at each start).

    >>> gate = PasswordGate(app, "s3cret", cookie="tensorboard_6006")
    """

    def __init__(self, app, password, cookie):
        if not password:
            raise ValueError("empty password")
        self.app = app
        self.password = password.encode()
        self.cookie = cookie
        self.token = secrets.token_urlsafe(32)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path == "/login":
            if environ.get("REQUEST_METHOD") == "POST":
                return self._login(environ, start_response)
            return _page(start_response, "200 OK", "")
        if self._has_cookie(environ):
            return self.app(environ, start_response)
        if path == "/":
            return _page(start_response, "401 Unauthorized", "")
        return _reply(start_response, "401 Unauthorized", "text/plain; charset=utf-8",
                      b"log in first\n")

    def _has_cookie(self, environ) -> bool:
        try:
            jar = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        except CookieError:
            return False
        morsel = jar.get(self.cookie)
        # As bytes: compare_digest refuses str with non-ASCII characters (a forged cookie).
        return morsel is not None and hmac.compare_digest(morsel.value.encode(),
                                                          self.token.encode())

    def _login(self, environ, start_response):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM:
            return _reply(start_response, "413 Payload Too Large",
                          "text/plain; charset=utf-8", b"login form too large\n")
        form = parse_qs(environ["wsgi.input"].read(length).decode("utf-8", "replace"))
        given = (form.get("password") or [""])[0].encode()
        if not hmac.compare_digest(given, self.password):
            time.sleep(WRONG_DELAY)
            return _page(start_response, "403 Forbidden", "Wrong password.")
        start_response("303 See Other", [
            ("Location", "./"), ("Content-Length", "0"), ("Cache-Control", "no-store"),
            # No Path: the browser scopes it to this session's directory (OOD's
            # /rnode/HOST/PORT/), so sessions behind one portal keep apart.
            ("Set-Cookie", f"{self.cookie}={self.token}; HttpOnly; SameSite=Lax")])
        return [b""]


def _page(start_response, status, message):
    note = f'<p role="alert">{html.escape(message)}</p>\n' if message else ""
    return _reply(start_response, status, "text/html; charset=utf-8",
                  PAGE.format(message=note).encode())


def _reply(start_response, status, content_type, body):
    start_response(status, [("Content-Type", content_type), ("Cache-Control", "no-store"),
                            ("Content-Length", str(len(body)))])
    return [body]


def split_args(argv):
    """``--password-file FILE`` (ours) apart from TensorBoard's own arguments."""
    rest, password_file = [], None
    args = iter(argv)
    for arg in args:
        if arg == "--password-file":
            password_file = next(args, None)
        elif arg.startswith("--password-file="):
            password_file = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if not password_file:
        raise SystemExit("tensorboard_gate: --password-file FILE is required")
    return password_file, rest


def main(argv):
    password_file, tensorboard_args = split_args(argv)
    with open(password_file, encoding="utf-8") as f:
        password = f.read().strip()
    if not password:
        raise SystemExit(f"tensorboard_gate: {password_file}: empty password")

    from tensorboard import program

    class GatedServer(program.WerkzeugServer):
        def __init__(self, wsgi_app, flags):
            gate = PasswordGate(wsgi_app, password, cookie=f"tensorboard_{flags.port}")
            super().__init__(gate, flags)

    board = program.TensorBoard(server_class=GatedServer)
    board.configure(argv=["tensorboard", *tensorboard_args])
    return board.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
