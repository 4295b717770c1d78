"""The ``u2cb`` client's own logic: where the server is, what is uploaded, the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcstack.client import api
from hpcstack.client.main import uploads_for
from hpcstack.client.prompt import PROMPT, Prompt
from hpcstack.errors import UserError


def test_server_from_flag_env_config_default(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("U2CB_SERVER", raising=False)
    monkeypatch.delenv("U2CB_TOKEN", raising=False)
    monkeypatch.setattr(api, "config_files", lambda: [tmp_path / "u2cb" / "config.yaml"])
    assert api.load_config().server == api.DEFAULT_SERVER
    (tmp_path / "u2cb").mkdir()
    (tmp_path / "u2cb" / "config.yaml").write_text("server: http://cfg:1/\ntoken: t0\n")
    cfg = api.load_config()
    assert (cfg.server, cfg.token) == ("http://cfg:1", "t0")
    monkeypatch.setenv("U2CB_SERVER", "http://env:2")
    assert api.load_config().server == "http://env:2"
    assert api.load_config("http://flag:3").server == "http://flag:3"
    (tmp_path / "u2cb" / "config.yaml").write_text("- not a mapping\n")
    with pytest.raises(UserError, match="expected a mapping"):
        api.load_config()


def test_uploads_are_the_files_section_relative_to_the_definition(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.c").write_text("int main(){}")
    (tmp_path / "src" / "sub").mkdir()
    (tmp_path / "src" / "sub" / "b.h").write_text("")
    (tmp_path / "data.txt").write_text("d")
    (tmp_path / "unrelated").write_text("")
    deffile = tmp_path / "t.def"
    deffile.write_text("Bootstrap: scratch\n%files\n    src /opt/src\n    *.txt /opt/\n"
                       "    /etc/hostname /x\n")
    assert [rel for rel, _ in uploads_for(deffile)] == ["data.txt", "src/a.c", "src/sub/b.h"]
    deffile.write_text("%not a definition\n")
    assert uploads_for(deffile) == []


def test_prompt_runs_verbs_and_refuses_others(capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[list[str]] = []
    prompt = Prompt(lambda argv: ran.append(argv) or 0)
    assert prompt.prompt == PROMPT == "(U2CB Server) > "
    prompt.onecmd("list def")
    prompt.onecmd("create -n box -b 'docker://r/x:1'")
    prompt.onecmd("rm -rf /")
    assert ran == [["list", "def"], ["create", "-n", "box", "-b", "docker://r/x:1"]]
    assert "unknown command 'rm'" in capsys.readouterr().out
    assert prompt.onecmd("exit") is True


def test_server_errors_become_one_line() -> None:
    import httpx

    resp = httpx.Response(404, json={"detail": "box: no such container"},
                          request=httpx.Request("GET", "http://x"))
    with pytest.raises(UserError, match=r"^box: no such container$"):
        api.check(resp)
    resp = httpx.Response(502, text="<html>", request=httpx.Request("GET", "http://x"))
    with pytest.raises(UserError, match="answered 502"):
        api.check(resp)
