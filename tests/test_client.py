"""The ``u2cb`` client's own logic: where the server is, what is uploaded, the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcstack.client import api, config, quick
from hpcstack.client.main import uploads_for
from hpcstack.client.prompt import PROMPT, Prompt
from hpcstack.errors import UserError


def test_server_from_flag_env_config_default(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("U2CB_SERVER", raising=False)
    monkeypatch.delenv("U2CB_TOKEN", raising=False)
    monkeypatch.setattr(config, "config_files", lambda: [tmp_path / "u2cb" / "config.yaml"])
    assert config.load_config().server == config.DEFAULT_SERVER
    (tmp_path / "u2cb").mkdir()
    (tmp_path / "u2cb" / "config.yaml").write_text("server: http://cfg:1/\ntoken: t0\n")
    cfg = config.load_config()
    assert (cfg.server, cfg.token) == ("http://cfg:1", "t0")
    monkeypatch.setenv("U2CB_SERVER", "http://env:2")
    assert config.load_config().server == "http://env:2"
    assert config.load_config("http://flag:3").server == "http://flag:3"
    (tmp_path / "u2cb" / "config.yaml").write_text("- not a mapping\n")
    with pytest.raises(UserError, match="expected a mapping"):
        config.load_config()


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


@pytest.mark.parametrize("argv, query", [
    (["list"], quick.ListQuery()),
    (["list", "def", "--json"], quick.ListQuery(kind="def", as_json=True)),
    (["--server", "http://h:1", "list", "img", "--all"],
     quick.ListQuery("http://h:1", "img", all_users=True)),
    (["-s", "http://h:1", "--server=http://h:2", "list"], quick.ListQuery("http://h:2")),
    # Anything else is the full CLI's: other verbs, help, unknown words, a bad kind.
    (["status", "-n", "x"], None), (["list", "--help"], None), (["list", "bogus"], None),
    (["list", "def", "img"], None), (["--server"], None), ([], None),
])
def test_quick_list_takes_only_plain_list_command_lines(argv, query) -> None:
    assert quick.parse(argv) == query


def test_quick_list_table_is_plain_and_aligned() -> None:
    rows = [{"name": "a", "kind": "def", "state": "ready", "size": 1536, "source": "x.def",
             "created": "2026-11-30T05:00:01.123+00:00", "owner": "ann"},
            {"name": "longer", "kind": "img", "state": "failed", "size": None,
             "source": "docker://r/debian", "created": "2026-11-30T06:00:00", "owner": "bob"}]
    text = quick.plain_table((*quick.COLUMNS, "owner"), quick.table_rows(rows, True))
    assert text.splitlines() == [
        "name    kind  state   size     source             created              owner",
        "a       def   ready   1.5 KiB  x.def              2026-11-30 05:00:01  ann",
        "longer  img   failed  -        docker://r/debian  2026-11-30 06:00:00  bob",
    ]
