"""Studio: generated Open OnDemand apps — layout, YAML, ERB rendering, container commands.

Open OnDemand itself is not installed here: ``tests/ood_harness.rb`` renders the
ERB templates with Ruby's own ``erb`` the way OOD does (form values, host, port,
password).  Apptainer is not installed either: its command lines are checked
against the runtime adapter, not run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import HPCSTACK_PREFIX, REPO, need
from hpcstack.errors import UserError
from hpcstack.runtime import Launch, select
from hpcstack.studio import generate, load_studio, parse_studio
from hpcstack.studio.command import shell_word
from hpcstack.studio.generate import KIND_SPECS

HARNESS = REPO / "tests" / "ood_harness.rb"
EXAMPLE = REPO / "examples" / "studio" / "studio.yaml"
FORM = {"partition": "cpu", "size": "cpu-1", "hours": "2", "working_dir": "/tmp/my dir",
        "logdir": "/tmp/logs"}
#: What OOD's smart attributes or our form define; anything else in form: must be in attributes.
VARS = {"port": "4711", "password": "s3cret", "host": "node01", "config": "/w/cfg",
        "session": "/w",
        "workdir": "/tmp/my dir", "logdir": "/data/run 1", "USER": "alice",
        "auth_helper": "/w/bin/auth", "data_dir": "/w/rstudio", "cookie_key": "/w/key"}


def _apps(tmp_path: Path, runtime: str = "apptainer") -> tuple[Path, list[Path]]:
    text = EXAMPLE.read_text().replace("runtime: apptainer", f"runtime: {runtime}")
    site = EXAMPLE.parent.parent / "modules" / "site.yaml"
    config = tmp_path / "studio.yaml"
    config.write_text(text.replace("modules: ../modules/site.yaml", f"modules: {site}"))
    studio, modules = load_studio(config)
    return tmp_path, generate(studio, modules, tmp_path / "apps")


def test_every_app_follows_ood_layout(tmp_path: Path) -> None:
    _, apps = _apps(tmp_path)
    assert {p.name for p in apps} >= {"jupyter", "vscode", "tensorboard", "rstudio",
                                      "gromacs-desktop"}
    for app in apps:
        manifest = yaml.safe_load((app / "manifest.yml").read_text())
        assert manifest["role"] == "batch_connect" and manifest["name"] and manifest["category"]
        form = yaml.safe_load((app / "form.yml").read_text())
        assert form["cluster"] == "hpc"
        assert set(form["form"]) <= set(form["attributes"])
        assert form["attributes"]["working_dir"]["widget"] == "path_selector"
        assert (app / "template" / "script.sh.erb").is_file()
        assert (app / "template" / "before.sh.erb").is_file()
        # Desktops too: their VNC server runs in the desktop image, behind OOD's basic template.
        assert (app / "view.html.erb").is_file()
        assert (app / "template" / "after.sh.erb").is_file()
        desktop = (app / "template" / "desktop.sh").is_file()
        assert desktop == (manifest["name"] in ("Grace", "Octave", "GROMACS desktop"))
        allowed = {"manifest.yml", "form.yml", "submit.yml.erb", "view.html.erb", "template"}
        assert {p.name for p in app.iterdir()} <= allowed


def _render(app: Path, staged: Path, **form: str) -> subprocess.CompletedProcess[str]:
    values = [f"{k}={v}" for k, v in (FORM | form).items()]
    return subprocess.run(["ruby", str(HARNESS), "stage", str(app), str(staged), *values],
                          capture_output=True, text=True, check=False)


def test_every_erb_renders_and_scripts_pass_bash_n(tmp_path: Path) -> None:
    need("ruby")
    _, apps = _apps(tmp_path)
    for app in apps:
        staged = tmp_path / "staged" / app.name
        form = yaml.safe_load((app / "form.yml").read_text())
        size = form["attributes"]["size"]["options"][0][1]
        proc = _render(app, staged, size=size)
        assert proc.returncode == 0, proc.stderr
        submit = yaml.safe_load((staged / "submit.yml").read_text())
        native = submit["script"]["native"]
        assert "--time=2:00:00" in native and "--nodes=1" in native
        assert submit["batch_connect"]["template"] == "basic"
        vnc = (app / "template" / "desktop.sh").exists()
        assert {"display", "websocket"} <= set(submit["batch_connect"]["conn_params"]) or not vnc
        for script in staged.glob("*.sh"):
            check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
            assert check.returncode == 0, f"{script}: {check.stderr}"
        if (app / "view.html.erb").exists():
            (staged / "connection.yml").write_text("host: node01\nport: 4711\npassword: pw\n"
                                                   "display: 1\nwebsocket: 4711\n")
            html = tmp_path / f"{app.name}.html"
            subprocess.run(["ruby", str(HARNESS), "view", str(app), str(staged), str(html)],
                           check=True)
            assert "node01/4711" in html.read_text()
            if vnc:
                assert "path=rnode/node01/4711/websockify&amp;password=pw" in html.read_text()


@pytest.mark.parametrize(("size", "expected"), [
    ("cpu-1", ["--partition=cpu", "--cpus-per-task=1"]),
    ("cpu-40", ["--partition=cpu", "--cpus-per-task=40", "--exclusive"]),
    ("gpu-1", ["--partition=gpu", "--gres=gpu:1"]),
    ("gpu-4", ["--partition=gpu", "--gres=gpu:4"]),
    ("gpu-8", ["--partition=gpu", "--gres=gpu:8", "--exclusive"]),
])
def test_instance_sizes_map_to_slurm_args(tmp_path: Path, size: str, expected: list[str]) -> None:
    need("ruby")
    _, apps = _apps(tmp_path)
    app = next(a for a in apps if a.name == ("jupyter-gpu" if "gpu" in size else "jupyter"))
    proc = _render(app, tmp_path / "s", size=size)
    assert proc.returncode == 0, proc.stderr
    native = yaml.safe_load((tmp_path / "s" / "submit.yml").read_text())["script"]["native"]
    assert set(expected) <= set(native)
    assert ("--exclusive" in native) == ("--exclusive" in expected)


def test_unknown_size_or_partition_is_refused(tmp_path: Path) -> None:
    need("ruby")
    _, apps = _apps(tmp_path)
    assert _render(apps[0], tmp_path / "a", size="huge").returncode != 0
    assert _render(apps[0], tmp_path / "b", partition="secret").returncode != 0


def _container(script: Path, name: str = "container") -> list[str]:
    """The container argv a rendered script.sh.erb runs, as bash reads it."""
    line = next(x for x in script.read_text().splitlines() if x.startswith(f"{name}=("))
    sets = "; ".join(f"{k}={shell_word(v)}" for k, v in VARS.items())
    out = subprocess.run(["bash", "-c", f"{sets}; {line}; printf '%s\\0' \"${{{name}[@]}}\""],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def _expand(words: tuple[str, ...]) -> list[str]:
    out = []
    for word in words:
        for key, value in VARS.items():
            word = word.replace("${" + key + "}", value)
        out.append(word)
    return out


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_container_commands_are_the_adapters(tmp_path: Path, runtime: str) -> None:
    """Apptainer/Singularity are not installed here: the command lines are compared with
    the adapter's, which is tested against Apptainer's documented CLI."""
    _, apps = _apps(tmp_path, runtime)
    studio = parse_studio(EXAMPLE.read_text())
    for app in apps:
        entry = next(a for a in studio.apps if a.name == app.name)
        if entry.module:
            assert f"module load {entry.module}" in (app / "template/script.sh.erb").read_text()
            continue
        script = app / "template" / "script.sh.erb"
        if entry.kind == "desktop":
            desktop = Launch("exec", Path(studio.desktop), ["bash", "/w/desktop.sh"], cwd=Path("/"))
            assert _container(script, "desktop") == select(runtime, environ={}).argv(desktop)
            launch = Launch("exec", Path(entry.image), entry.command.split(), cwd=Path("/"))
            assert _container(script) == select(runtime, environ={}).argv(launch)
            continue
        spec = KIND_SPECS[entry.kind]
        launch = Launch("exec", Path(entry.image), _expand(spec.args),
                        binds=_expand(spec.binds), gpu=entry.gpu, cwd=Path("/"))
        expected = select(runtime, environ={}).argv(launch)
        assert _container(app / "template" / "script.sh.erb") == expected
        if entry.gpu:
            assert "--nv" in expected


def test_charliecloud_scripts_ask_the_adapter_at_job_time(tmp_path: Path) -> None:
    _, apps = _apps(tmp_path, "charliecloud")
    argv = _container(next(a for a in apps if a.name == "tensorboard") / "template/script.sh.erb")
    assert argv[:4] == ["/opt/hpcstack/bin/hpcstack", "exec", "--runtime", "charliecloud"]
    assert argv[4:7] == ["--bind", "/data/run 1:/logs", "/opt/hpcstack/images/tensorboard.sif"]
    assert argv[7:] == _expand(KIND_SPECS["tensorboard"].args)


@pytest.mark.parametrize(("text", "message"), [
    ("cluster: hpc\npartitions: [cpu]\napps: [{name: j, kind: spark, image: /a.sif}]",
     "apps[0].kind: Input should be"),
    ("cluster: hpc\npartitions: [cpu]\napps: [{name: j, kind: jupyter}]",
     "apps[0]: give exactly one of image or module"),
    ("cluster: hpc\npartitions: []\n", "partitions: List should have at least 1 item"),
    ("cluster: hpc\ndesktop: /d.sif\npartitions: [cpu]\napps: [{name: d, kind: desktop, "
     "image: /a.sif}]", "needs command"),
    ("cluster: hpc\npartitions: [cpu]\napps: [{name: d, kind: desktop, image: /a.sif, "
     "command: xmgrace}]", "desktop: desktop apps need the desktop image"),
    ("cluster: hpc\ndesktop: /d.sif\npartitions: [cpu]\napps: [{name: d, kind: desktop, "
     "image: /a.sif, command: 'xmgrace; rm'}]", "apps[0].command:"),
    ("cluster: hpc\npartitions: [cpu]\napps: [{name: j, kind: jupyter, image: '/a b.sif'}]",
     "apps[0].image:"),
    ("cluster: hpc\npartitions: [cpu]\napps: [{name: j, kind: jupyter, image: /a, "
     "presets: [xl]}]", "unknown preset 'xl'"),
])
def test_config_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(UserError, match=r"studio\.yaml: ") as err:
        parse_studio(text, "studio.yaml")
    assert message in str(err.value)


def test_cli_generate_only_and_errors(tmp_path: Path) -> None:
    hpcstack = str(HPCSTACK_PREFIX / "bin" / "hpcstack")
    out = tmp_path / "apps"
    ok = subprocess.run([hpcstack, "studio", "generate", "-c", str(EXAMPLE), "--only",
                         "jupyter", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert [p.name for p in out.iterdir()] == ["jupyter"]
    bad = subprocess.run([hpcstack, "studio", "generate", "-c", str(EXAMPLE), "--only",
                          "nope", str(out)], capture_output=True, text=True)
    assert bad.returncode == 1 and "no such app" in bad.stderr and "Traceback" not in bad.stderr
    assert [p.name for p in out.iterdir()] == ["jupyter"]


def test_tensorboard_apps_stage_the_password_gate(tmp_path: Path) -> None:
    """TensorBoard has no login: its app stages this package's gate and runs it with the
    session's password file (written 0600 by before.sh), not ``tensorboard`` itself."""
    from hpcstack.studio import tensorboard_gate

    _, apps = _apps(tmp_path)
    app = next(a for a in apps if a.name == "tensorboard")
    staged = (app / "template" / "tensorboard_gate.py").read_text()
    assert staged == Path(tensorboard_gate.__file__).read_text()
    args = list(KIND_SPECS["tensorboard"].args)
    assert args[:4] == ["python3", "${session}/tensorboard_gate.py", "--password-file",
                        "${session}/tensorboard.passwd"]
    before = (app / "template" / "before.sh.erb").read_text()
    assert "umask 077" in before and '> "${session}/tensorboard.passwd"' in before
    assert not any((a / "template" / "tensorboard_gate.py").exists()
                   for a in apps if a.name != "tensorboard")
