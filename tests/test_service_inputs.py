"""Hostile input at the U2CB boundary: names, upload paths, upload sizes, unreadable files.

The validator's rules are tested fast and exhaustively (hypothesis); then the real
service (its own unprivileged account, MUNGE, SQLite) is sent bad bodies over raw HTTP
by an ordinary user: each gets one line and a 4xx, leaves no record and no file, and
the service keeps serving.  What an over-limit upload puts on disk is measured in the
service's own temporary directory while the body streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import socket
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import User
from hpcstack.service import uploads
from hpcstack.service.models import (
    BASE_PATTERN,
    COMPONENT_MAX_BYTES,
    NAME_MAX,
    NAME_PATTERN,
    PATH_MAX_BYTES,
    PATH_PATTERN,
    base_problem,
    name_problem,
    path_problem,
)
from test_service import (  # noqa: F401 (fixtures)
    Service,
    account,
    data_dir,
    munge,
    one_line_error,
    put,
)

BAD = [".", "..", "a\x00b", "a\x01b", "a\u2028b", "x" * 300, "a/b"]
LIMIT = 1 << 20
CHUNK = 64 << 10
GOOD_DEF = b"Bootstrap: scratch\n\n%files\n    data.txt /data.txt\n"


# --- the validator (pure) --------------------------------------------------------------


@pytest.mark.parametrize("name", [*BAD, "", "\x7f", "a\x85", "a\u2029", "a\n", "def"])
def test_bad_names_are_one_line_naming_the_field(name: str) -> None:
    problem = name_problem(name)
    assert problem and problem.startswith("name")
    assert problem.isprintable(), problem


@pytest.mark.parametrize("path", [*BAD[:-1], "", "/etc/passwd", "a//b", "a/./b", "a/../b",
                                  "a/", "a\\b", "a\x9fb", "y" * 256,
                                  "/".join(["z" * 200] * 6)])
def test_bad_upload_paths_are_one_line_naming_the_field(path: str) -> None:
    problem = path_problem(path, "paths")
    assert problem and problem.startswith("paths")
    assert problem.isprintable(), problem


def test_the_definition_name_is_one_part() -> None:
    assert path_problem("app.def", "definition", single=True) is None
    assert path_problem("a/b", "definition", single=True).startswith("definition")
    assert path_problem("ü.def", "definition", single=True) is None


@given(st.text(max_size=80) | st.from_regex(NAME_PATTERN, fullmatch=True))
def test_name_rule_is_the_spec_pattern_and_length(name: str) -> None:
    by_spec = re.fullmatch(NAME_PATTERN, name) is not None and 0 < len(name) <= NAME_MAX
    assert (name_problem(name) is None) == by_spec
    if problem := name_problem(name):
        assert len(problem.splitlines()) == 1


@given(st.text(max_size=300) | st.from_regex(PATH_PATTERN, fullmatch=True))
def test_path_rule_is_the_spec_pattern_and_byte_lengths(path: str) -> None:
    fits = (len(path.encode()) <= PATH_MAX_BYTES
            and all(len(p.encode()) <= COMPONENT_MAX_BYTES for p in path.split("/")))
    by_spec = re.fullmatch(PATH_PATTERN, path) is not None and fits
    assert (path_problem(path) is None) == by_spec
    if path_problem(path) is None:
        assert os.path.normpath(os.path.join("/base", path)).startswith("/base/")
    else:
        assert len(path_problem(path).splitlines()) == 1


@given(st.text(max_size=60) | st.from_regex(BASE_PATTERN, fullmatch=True))
def test_base_rule_is_the_spec_pattern(base: str) -> None:
    assert (base_problem(base) is None) == (re.fullmatch(BASE_PATTERN, base) is not None
                                            and len(base) <= 1000)


def _receive(body: bytes, cuts: list[int], content_type: str, limit: int = 1 << 20):
    """``uploads.receive`` on ``body`` cut into pieces at ``cuts``, in a fresh staging dir."""
    async def pieces():
        last = 0
        for cut in [*sorted({c % (len(body) + 1) for c in cuts}), len(body)]:
            yield body[last:cut]
            last = cut

    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "staging"
        staging.mkdir()
        try:
            got = asyncio.run(uploads.receive(pieces(), content_type, staging, limit))
        except uploads.UploadError as err:
            assert err.status in (400, 413, 422) and err.detail.isprintable(), err.detail
            return None
        for f in (*got.definition, *got.files):
            assert f.path.parent == staging / "parts" and f.path.stat().st_size == f.size
        return {"name": got.name, "paths": got.paths,
                "definition": [f.path.read_bytes() for f in got.definition],
                "files": [f.path.read_bytes() for f in got.files]}


CTYPE = "multipart/form-data; boundary=B0undary"


@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=8),
       st.sampled_from([CTYPE, "multipart/form-data", "application/json", ""]))
def test_receive_takes_any_bytes_without_a_crash(data: bytes, cuts: list[int],
                                                 ctype: str) -> None:
    _receive(data, cuts, ctype)


@given(st.lists(st.tuples(st.sampled_from([b"name", b"paths", b"definition", b"files",
                                           b"other"]),
                          st.one_of(st.none(), st.binary(max_size=20).filter(
                              lambda b: b'"' not in b and b"\r" not in b and b"\n" not in b)),
                          st.binary(max_size=300).filter(lambda b: b"B0undary" not in b)),
                max_size=6),
       st.lists(st.integers(0, 2000), max_size=8))
def test_receive_keeps_each_part_whatever_the_chunking(parts: list, cuts: list[int]) -> None:
    got = _receive(multipart(parts), cuts, CTYPE)
    if got is None:
        return
    for field in ("name", "paths"):
        assert got[field] == [d.decode() for n, _f, d in parts if n.decode() == field]
    for field in ("definition", "files"):
        assert got[field] == [d for n, _f, d in parts if n.decode() == field]


def test_receive_stops_at_the_limit() -> None:
    body = multipart([(b"files", b"x", b"y" * 5000)])
    assert _receive(body, [100, 200], CTYPE, limit=len(body)) is not None
    assert _receive(body, [100, 200], CTYPE, limit=len(body) - 1) is None


# --- the service, over raw HTTP --------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(account: User, munge):  # noqa: F811
    """A service with a 1 MiB upload limit."""
    svc = Service(account, munge, data_dir(account, "inputs"), "--max-upload", str(LIMIT),
                  "--time-limit", "20").start()
    yield svc
    svc.stop()


def on_disk(svc: Service) -> tuple[list[str], list[str]]:
    """What is under the service's tmp directory, and which container directories exist."""
    tmp = []
    for d, dirs, files in os.walk(svc.data / "tmp"):
        tmp += [os.path.relpath(os.path.join(d, f), svc.data) for f in (*dirs, *files)]
    return sorted(tmp), sorted(os.listdir(svc.data / "containers"))


def tmp_bytes(svc: Service) -> int:
    total = 0
    for d, _dirs, files in os.walk(svc.data / "tmp"):
        for f in files:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                total += os.stat(os.path.join(d, f)).st_size
    return total


def listing(svc: Service, user: User) -> list[str]:
    r = svc.get(user, "/containers")
    assert r.status_code == 200, r.text
    return [c["name"] for c in r.json()["containers"]]


def multipart(parts: list[tuple[bytes, bytes | None, bytes]], boundary: bytes = b"B0undary"
              ) -> bytes:
    """A multipart/form-data body built by hand: (field, raw filename or None, data)."""
    out = b""
    for name, filename, data in parts:
        disp = b'form-data; name="' + name + b'"'
        if filename is not None:
            disp += b'; filename="' + filename + b'"'
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disp + b"\r\n\r\n" + data + \
            b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def post_def(svc: Service, user: User, body: bytes) -> httpx.Response:
    return httpx.post(f"{svc.url}/api/v1/containers/def", content=body, timeout=60,
                      headers={"X-Munge-Credential": svc.munge.credential(user),
                               "Content-Type": "multipart/form-data; boundary=B0undary"})


def body(name: bytes = b"ok", filename: bytes = b"t.def", path: bytes = b"data.txt") -> bytes:
    return multipart([(b"name", None, name), (b"definition", filename, GOOD_DEF),
                      (b"files", b"data.txt", b"data\n"), (b"paths", None, path)])


def assert_refused_cleanly(svc: Service, user: User, r: httpx.Response, status: int,
                           field: str) -> str:
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail.startswith(field), detail
    assert detail.isprintable() and len(detail) < 300, detail
    assert on_disk(svc) == ([], []), "files left behind"
    assert listing(svc, user) == [], "a record left behind"
    assert httpx.get(f"{svc.url}/api/v1/health").status_code == 200
    return detail


@pytest.mark.parametrize("bad", BAD)
def test_bad_name_filename_and_path_get_422_and_leave_nothing(inputs: Service, user: User,
                                                              bad: str) -> None:
    raw = bad.encode()
    assert_refused_cleanly(inputs, user, post_def(inputs, user, body(name=raw)), 422, "name")
    assert_refused_cleanly(inputs, user, post_def(inputs, user, body(filename=raw)), 422,
                           "definition")
    if bad != "a/b":  # a path of two parts, as %files may upload
        assert_refused_cleanly(inputs, user, post_def(inputs, user, body(path=raw)), 422,
                               "paths")
    cred = inputs.munge.credential(user)
    r = httpx.post(f"{inputs.url}/api/v1/containers", json={"name": bad, "base": "docker://x/y"},
                   headers={"X-Munge-Credential": cred})
    assert_refused_cleanly(inputs, user, r, 422, "name")


def test_good_body_makes_a_record_with_its_files(inputs: Service, user: User) -> None:
    r = post_def(inputs, user, body(name=b"good"))
    assert r.status_code == 202, r.text
    assert listing(inputs, user) == ["good"]
    tmp, kept = on_disk(inputs)
    assert tmp == [] and len(kept) == 1
    where = inputs.data / "containers" / kept[0]
    assert (where / "def" / "data.txt").read_bytes() == b"data\n"
    assert (where / "def" / "t.def").read_bytes() == GOOD_DEF
    assert (where / "submitted.def").read_bytes() == GOOD_DEF
    # Taken, twice-given, nested and the definition's own name: refused, nothing more kept.
    for again, status, field in ((body(name=b"good"), 409, "good"),
                                 (multipart([(b"name", None, b"two"),
                                             (b"definition", b"t.def", GOOD_DEF),
                                             (b"files", b"x", b"1"), (b"files", b"x", b"2"),
                                             (b"paths", None, b"data.txt"),
                                             (b"paths", None, b"data.txt")]), 422, "paths"),
                                 (body(name=b"three", path=b"t.def"), 422, "paths"),
                                 (body(name=b"four", filename=b"data.txt"), 422, "paths")):
        r = post_def(inputs, user, again)
        assert r.status_code == status and r.json()["detail"].startswith(field), r.text
        assert on_disk(inputs) == ([], kept)
    assert listing(inputs, user) == ["good"]
    r = httpx.delete(f"{inputs.url}/api/v1/containers/good",
                     headers={"X-Munge-Credential": inputs.munge.credential(user)})
    assert r.status_code == 204


def test_not_multipart_and_truncated_bodies_are_refused(inputs: Service, user: User) -> None:
    cred = {"X-Munge-Credential": inputs.munge.credential(user)}
    r = httpx.post(f"{inputs.url}/api/v1/containers/def", json={"name": "x"}, headers=cred)
    assert r.status_code == 422 and r.json()["detail"].startswith("body"), r.text
    truncated = body(name=b"cut")[:-20]
    r = post_def(inputs, user, truncated)
    assert r.status_code == 400 and r.json()["detail"].startswith("body"), r.text
    assert on_disk(inputs) == ([], [])
    assert listing(inputs, user) == []


class RawUpload:
    """A chunked POST over a plain socket, sent piece by piece; its answer read whenever
    the service sends one (a careful client stops sending then)."""

    def __init__(self, svc: Service, user: User, headers: dict[str, str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", svc.port))
        self.sock.setblocking(False)
        lines = ["POST /api/v1/containers/def HTTP/1.1", f"Host: 127.0.0.1:{svc.port}",
                 f"X-Munge-Credential: {svc.munge.credential(user)}",
                 "Content-Type: multipart/form-data; boundary=B0undary",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.pending = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.chunked = "Content-Length" not in headers
        self.answer = b""
        self.sent = 0

    def readable(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])

    def answered(self) -> bool:
        return b"\r\n\r\n" in self.answer

    def send(self, data: bytes, wait: float = 30) -> bool:
        """Send ``data`` (a chunk of the body); False once the service has answered."""
        if self.chunked:
            data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        self.pending += data
        deadline = time.monotonic() + wait
        while self.pending:
            readable, writable, _ = select.select([self.sock], [self.sock], [], 1)
            if readable:
                self.read()
                return False
            if writable:
                try:
                    n = self.sock.send(self.pending)
                except (BrokenPipeError, ConnectionResetError):
                    return False
                self.pending = self.pending[n:]
                self.sent += n
            assert time.monotonic() < deadline, "the service neither reads nor answers"
        return True

    def read(self, wait: float = 60) -> tuple[int, dict]:
        deadline = time.monotonic() + wait
        while True:
            head, _, rest = self.answer.partition(b"\r\n\r\n")
            if _:
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                if len(rest) >= length:
                    return int(head.split()[1]), json.loads(rest[:length])
            assert time.monotonic() < deadline, f"no answer: {self.answer!r}"
            if select.select([self.sock], [], [], 1)[0]:
                try:
                    piece = self.sock.recv(65536)
                except ConnectionResetError:
                    piece = b""
                assert piece or self.answered(), f"closed without an answer: {self.answer!r}"
                self.answer += piece

    def close(self) -> None:
        self.sock.close()


def test_upload_over_the_limit_is_refused_while_it_streams(inputs: Service, user: User
                                                           ) -> None:
    """50 MiB sent chunked (no Content-Length) against a 1 MiB limit: a 413 comes back
    while the client is still sending, no more than the limit (plus one chunk) ever
    reached the service's disk, and nothing of it remains."""
    size = 50 << 20
    up = RawUpload(inputs, user, {"Transfer-Encoding": "chunked"})
    head = multipart([(b"name", None, b"big"), (b"definition", b"t.def", GOOD_DEF)])
    head = head[: -len(b"--B0undary--\r\n")]
    head += b'--B0undary\r\nContent-Disposition: form-data; name="files"; filename="x"\r\n\r\n'
    assert up.send(head)
    piece = os.urandom(CHUNK)
    most, streamed = 0, 0
    try:
        # Piece by piece, each waited for until it is on the service's disk (less what the
        # parser may hold back looking for a boundary) or the service answers: what is
        # seen on disk after each piece is what the service wrote.
        while streamed < size and up.send(piece):
            streamed += len(piece)
            deadline = time.monotonic() + 60
            while (seen := tmp_bytes(inputs)) < streamed - 1024 and not up.readable():
                assert time.monotonic() < deadline, "the upload does not reach the disk"
                time.sleep(0.01)
            most = max(most, seen)
            if up.readable():
                break
        status, answer = up.read()
    finally:
        up.close()
    print(f"\nstreamed {streamed} of {size} bytes before the 413; at most {most} bytes "
          f"seen in the service's tmp directory (limit {LIMIT})")
    assert status == 413, answer
    assert answer["detail"] == (f"upload of more than {LIMIT} bytes is over the limit of "
                                f"{LIMIT} bytes")
    assert streamed < size, "the service read the whole body before refusing it"
    assert most <= LIMIT + CHUNK, most
    deadline = time.monotonic() + 30
    while on_disk(inputs) != ([], []):  # the handler removes its staging as it answers
        assert time.monotonic() < deadline, on_disk(inputs)
        time.sleep(0.05)
    assert listing(inputs, user) == []
    assert httpx.get(f"{inputs.url}/api/v1/health").status_code == 200


def test_content_length_over_the_limit_is_refused_before_the_body(inputs: Service,
                                                                  user: User) -> None:
    up = RawUpload(inputs, user, {"Content-Length": str(50 << 20)})
    try:
        assert up.send(b"") or up.answered()  # the headers only
        status, answer = up.read()
    finally:
        up.close()
    assert (status, answer["detail"]) == (
        413, f"upload of {50 << 20} bytes is over the limit of {LIMIT} bytes")
    assert on_disk(inputs) == ([], [])
    assert listing(inputs, user) == []


# --- the client ------------------------------------------------------------------------


def test_client_refuses_unreadable_missing_and_odd_files(inputs: Service, user: User
                                                         ) -> None:
    work = user.workdir("u2cb-inputs")
    put(user, work / "t.def", GOOD_DEF)
    secret = put(user, work / "data.txt", "d\n")
    secret.chmod(0o000)
    err = one_line_error(inputs.u2cb(user, "defcreate", "-n", "c", "-d", "t.def", cwd=work))
    assert err == "t.def:4: %files: data.txt: cannot read data.txt: Permission denied", err
    secret.unlink()
    err = one_line_error(inputs.u2cb(user, "defcreate", "-n", "c", "-d", "t.def", cwd=work))
    assert err.startswith("t.def:4: %files: data.txt: no such file or directory"), err
    (work / "data.txt").mkdir()
    os.chown(work / "data.txt", user.uid, user.gid)
    sub = work / "data.txt" / "inner"
    sub.mkdir()
    os.chown(sub, user.uid, user.gid)
    sub.chmod(0o000)
    err = one_line_error(inputs.u2cb(user, "defcreate", "-n", "c", "-d", "t.def", cwd=work))
    assert err == "t.def:4: %files: data.txt: cannot read data.txt/inner: Permission denied"
    os.mkfifo(work / "fifo")
    os.chown(work / "fifo", user.uid, user.gid)
    put(user, work / "f.def", b"Bootstrap: scratch\n%files\n    fifo /x\n")
    err = one_line_error(inputs.u2cb(user, "defcreate", "-n", "c", "-d", "f.def", cwd=work))
    assert err == "f.def:3: %files: fifo: fifo: not a regular file or directory", err
    err = one_line_error(inputs.u2cb(user, "defcreate", "-n", "c", "-d", "data.txt",
                                     cwd=work))
    assert err == "data.txt: is a directory, not a definition file", err
    (work / "t.def").chmod(0o000)
    err = one_line_error(inputs.u2cb(user, "defcreate", "-n", "c", "-d", "t.def", cwd=work))
    assert err == "t.def: cannot read: Permission denied", err
    assert listing(inputs, user) == []
