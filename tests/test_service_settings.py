"""The service's one settings model: sources in order, one-line errors, --print-config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import HPCSTACK_PREFIX
from hpcstack.cli.serve import FLAGS
from hpcstack.errors import UserError
from hpcstack.service.config import Settings, load

HPCSTACK = str(HPCSTACK_PREFIX / "bin" / "hpcstack")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "u2cb.yaml"
    path.write_text(text)
    return path


def test_defaults_live_in_the_model_only(tmp_path: Path) -> None:
    loaded = load(config=write(tmp_path, ""), environ={}, flags={})
    for key, field in Settings.model_fields.items():
        assert loaded.origin[key] == "default"
        if field.default_factory is None and key != "instance":
            assert getattr(loaded.settings, key) == field.default, key
    assert loaded.settings.instance.endswith(":8473")  # HOST:PORT when not given


def test_every_setting_but_the_scheduler_tick_has_a_flag() -> None:
    assert set(FLAGS) <= set(Settings.model_fields)
    assert set(Settings.model_fields) - set(FLAGS) == {"poll_interval"}  # file or env only


def test_file_then_environment_then_flag(tmp_path: Path) -> None:
    conf = write(tmp_path, "# site settings\nmax_workers: 3\nport: 9000\nquota_bytes: 10\n"
                 "admin_users: [alice]\n")
    loaded = load(config=conf, environ={"U2CB_PORT": "9001", "U2CB_QUOTA_BYTES": "20",
                                        "U2CB_BUILD_LOOPBACK_PORTS": "5000, 5001"},
                  flags={"quota_bytes": 30, "max_workers": None}, flag_names=FLAGS)
    s = loaded.settings
    assert (s.max_workers, s.port, s.quota_bytes) == (3, 9001, 30)
    assert s.build_loopback_ports == [5000, 5001]
    assert s.admin_users == ["root", "alice"]  # root always
    assert loaded.origin["max_workers"] == f"{conf}:2"
    assert loaded.origin["port"] == "$U2CB_PORT"
    assert loaded.origin["quota_bytes"] == "--quota"
    assert loaded.origin["host"] == "default"


@pytest.mark.parametrize(("text", "environ", "flags", "line"), [
    ("wrokers: 3\n", {}, {}, "{conf}:1: wrokers: unknown setting (did you mean max_workers?)"),
    ("port: 1\nmax_workers: 0\n", {}, {},
     "{conf}:2: max_workers: Input should be greater than or equal to 1"),
    ("executor: pbs\n", {}, {}, "{conf}:1: executor: Input should be 'local' or 'slurm'"),
    ("", {"U2CB_BUILD_NETWORK": "maybe"}, {},
     "$U2CB_BUILD_NETWORK: build_network: Input should be a valid boolean, unable to "
     "interpret input"),
    ("", {}, {"instance": "a b"},
     "--instance: instance: String should match pattern '^[A-Za-z0-9._:-]+$'"),
    ("port: [1\n", {}, {}, "{conf}:2: not valid YAML: expected ',' or ']', but got '<stream "
     "end>'"),
    ("- a\n", {}, {}, "{conf}:1: expected a mapping of settings (key: value)"),
])
def test_a_wrong_key_or_value_is_one_line(tmp_path: Path, text: str, environ: dict,
                                          flags: dict, line: str) -> None:
    conf = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load(config=conf, environ=environ, flags=flags, flag_names=FLAGS)
    assert str(err.value) == line.format(conf=conf)


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such settings file"):
        load(environ={"U2CB_CONFIG": str(tmp_path / "none.yaml")})


def test_print_config_names_each_source(tmp_path: Path) -> None:
    conf = write(tmp_path, "max_workers: 4\n")
    out = subprocess.run([HPCSTACK, "serve", "--config", str(conf), "--print-config",
                          "--per-user", "2"], env={"U2CB_PORT": "9100", "HOME": "/nonexistent"},
                         capture_output=True, text=True, check=True).stdout
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    assert lines["max_workers"].split("#")[1].strip() == f"{conf}:1"
    assert lines["max_builds_per_user"].endswith("# --per-user")
    assert lines["port"].startswith("port: 9100") and lines["port"].endswith("# $U2CB_PORT")
    assert lines["host"].endswith("# default")
    assert out.startswith(f"# settings file: {conf} (read)")


def test_cli_error_is_one_line_no_traceback(tmp_path: Path) -> None:
    conf = write(tmp_path, "max_workers: many\n")
    proc = subprocess.run([HPCSTACK, "serve", "--config", str(conf)], capture_output=True,
                          text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"hpcstack: error: {conf}:1: max_workers: Input should be a valid integer, unable to "
        "parse string as an integer"]


def test_the_admin_guide_lists_every_setting() -> None:
    from conftest import REPO

    guide = (REPO / "docs" / "u2cb.md").read_text()
    missing = [key for key in Settings.model_fields if f"`{key}`" not in guide]
    assert missing == []
