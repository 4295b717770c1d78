"""The page's pure parts: composing a definition, refusing package names, the generated app."""

from __future__ import annotations

import shlex

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hpcstack.deffile import check, parse
from hpcstack.portal.compose import ComposeForm, compose, post_script
from hpcstack.portal.config import PortalConfig
from hpcstack.studio.config import parse_studio
from hpcstack.studio.generate import render_portal

SHELL = set(";&|`$()<>'\"\\*?[]{}!#~ \t\n")


def test_compose_writes_a_definition_the_checker_accepts() -> None:
    out = compose(ComposeForm(base="docker://127.0.0.1:5000/debian:bookworm", debs="hello, curl",
                              pips="rich==13.7 numpy", post="echo done > /done.txt"))
    assert out.problems == []
    stage = parse(out.text).final
    assert stage.bootstrap == "docker" and stage.from_ == "127.0.0.1:5000/debian:bookworm"
    body = stage.post.body
    assert "apt-get install -y --no-install-recommends hello curl python3-pip python3-venv" in body
    assert "pip install --no-cache-dir --break-system-packages rich==13.7 numpy" in body
    assert body.rstrip().endswith("echo done > /done.txt")


@pytest.mark.parametrize(("base", "header"), [
    ("debootstrap://bookworm", ("debootstrap", "OSVersion", "bookworm")),
    ("mybox", ("localimage", "From", "mybox")),
])
def test_other_bases(base: str, header: tuple[str, str, str]) -> None:
    out = compose(ComposeForm(base=base))
    assert out.problems == [] and check(out.text) == []
    stage = parse(out.text).final
    assert (stage.bootstrap, stage.get(header[1])) == (header[0], header[2])


@pytest.mark.parametrize(("field", "name"), [
    ("debs", "hello;id"), ("debs", "$(id)"), ("debs", "a`b`"), ("debs", "Upper"),
    ("pips", "x|y"), ("pips", "a>b"), ("pips", "a>=1"), ("pips", "-e"),
    ("pips", "pkg @ http://x"), ("pips", "x==1.*"),
])
def test_package_names_with_metacharacters_are_refused(field: str, name: str) -> None:
    out = compose(ComposeForm(base="docker://debian", **{field: name}))
    assert out.text == "" and out.problems and {p.field for p in out.problems} == {field}


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4))
def test_any_name_that_passes_is_inert_in_the_shell(names: list[str]) -> None:
    """Whatever is typed: either refused, or a word that shlex keeps as it is."""
    out = compose(ComposeForm(base="docker://debian", debs=" ".join(names)))
    if out.problems:
        return
    for word in " ".join(names).split():
        assert not (set(word) & SHELL)
        assert shlex.quote(word) == word


def test_a_post_line_the_syntax_cannot_hold() -> None:
    out = compose(ComposeForm(base="docker://debian", post="%files\n"))
    assert out.text == "" and [p.field for p in out.problems] == ["post"]


def test_bad_base_is_a_field_problem() -> None:
    assert [p.field for p in compose(ComposeForm(base="")).problems] == ["base"]
    assert [p.field for p in compose(ComposeForm(base="http://x")).problems] == ["base"]


def test_post_script_quotes_every_name() -> None:
    assert post_script([], [], "") == ""
    assert "apt-get install -y --no-install-recommends g++ libc6:amd64=2.36-9" in \
        post_script(["g++", "libc6:amd64=2.36-9"], [], "")


def test_studio_writes_the_portal_app() -> None:
    studio = parse_studio("""
cluster: hpc
partitions: [cpu]
u2cb:
  server: https://u2cb.example:8473
  python: /opt/hpcstack/bin/python
  max_upload: 1000
  bases: [{label: "Debian 12", ref: "docker://registry.example/debian:bookworm"}]
""")
    files = render_portal(studio.u2cb)
    assert sorted(files) == ["app.js", "manifest.yml", "portal.yaml"]
    config = PortalConfig(**yaml.safe_load(files["portal.yaml"]))
    assert config.server == "https://u2cb.example:8473" and config.max_upload == 1000
    assert config.bases[0].ref == "docker://registry.example/debian:bookworm"
    assert 'const PYTHON = "/opt/hpcstack/bin/python";' in files["app.js"]
    assert yaml.safe_load(files["manifest.yml"])["name"] == "Container builds (U2CB)"


def test_studio_refuses_a_bad_base_and_a_taken_name() -> None:
    from hpcstack.errors import UserError

    with pytest.raises(UserError, match=r"u2cb\.bases\[0\]\.ref"):
        parse_studio("cluster: hpc\npartitions: [cpu]\nu2cb: {bases: [{label: x, ref: 'ftp://x'}]}\n")
    with pytest.raises(UserError, match="a name is listed twice"):
        parse_studio("cluster: hpc\npartitions: [cpu]\nu2cb: {}\n"
                     "apps: [{name: u2cb, kind: jupyter, image: /x.sif}]\n")


def test_requests_from_another_site_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page of another site cannot make the user's browser act (forms, WebSockets);
    the service itself is not needed for that (an unreachable one here). A token
    stands in for MUNGE so the request gets as far as the (down) service whether or
    not a munged runs on this machine."""
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from hpcstack.portal.app import create_app

    monkeypatch.setenv("U2CB_TOKEN", "unused")
    app = create_app(PortalConfig(server="http://127.0.0.1:9"), "/pun/sys/u2cb")
    web = TestClient(app)
    evil = {"Origin": "https://evil.example"}
    for path in ("/c/box/delete", "/c/box/cancel", "/api/build"):
        resp = web.post(f"/pun/sys/u2cb{path}", headers=evil)
        assert resp.status_code == 403 and "another site" in resp.json()["detail"]
    with pytest.raises(WebSocketDisconnect) as closed, \
            web.websocket_connect("/pun/sys/u2cb/c/box/connect/ws", headers=evil) as ws:
        ws.receive_text()
    assert closed.value.code == 1008
    same = {"Origin": "http://testserver"}
    resp = web.post("/pun/sys/u2cb/api/check", headers=same, json={"text": "Bootstrap: x\n"})
    assert resp.json()["problems"][0]["message"] == "build.def:1: unknown bootstrap agent x"
    resp = web.get("/pun/sys/u2cb/")  # the service is down: one line, on the page
    assert resp.status_code == 502 and "cannot reach the build service" in resp.text
