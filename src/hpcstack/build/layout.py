"""What an image holds under ``/.singularity.d``, laid out as Apptainer does.

Pure: turns a definition stage into a list of files and links; the builder
writes them inside the build namespace.  Following Apptainer's layout is what
lets Apptainer (and our Charliecloud adapter, through the action scripts) run
the images we build::

    /.singularity.d/actions/{exec,run,shell,start,test}
    /.singularity.d/env/{01-base,10-docker2singularity,90-environment,99-base}.sh
    /.singularity.d/{runscript,startscript,test,runscript.help,labels.json,Singularity}
    /singularity -> .singularity.d/runscript, /environment -> ..., /.exec -> ...
"""

from __future__ import annotations

import json
import shlex
import textwrap
from dataclasses import dataclass
from importlib import resources

import jinja2

from hpcstack import __version__
from hpcstack.deffile import Script, Stage

SD = ".singularity.d"
ACTIONS = ("exec", "run", "shell", "start", "test")

# Directories and empty files that runtimes bind over; they must exist in the image.
MOUNT_DIRS = ("proc", "sys", "dev", "tmp", "var/tmp", "home", "root", "etc", "mnt", "opt")
MOUNT_FILES = ("etc/hosts", "etc/resolv.conf", "etc/passwd", "etc/group")


@dataclass(frozen=True)
class File:
    path: str  # relative to the root filesystem
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class Link:
    path: str
    target: str


def _shell_dq(value: str) -> str:
    """Escape ``value`` for use inside a double-quoted shell string."""
    for ch in ("\\", '"', "$", "`"):
        value = value.replace(ch, "\\" + ch)
    return value


_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("hpcstack.build", "templates"),
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
    undefined=jinja2.StrictUndefined,
)
_templates.filters["shell_dq"] = _shell_dq


def _static(name: str) -> str:
    return resources.files("hpcstack.build").joinpath("templates", name).read_text()


def script_file(path: str, script: Script) -> File:
    """A section as an executable script; ``%runscript -c /bin/bash`` picks the interpreter."""
    body = script.body.rstrip("\n") + "\n"
    interpreter = script.interpreter or "/bin/sh"
    text = _templates.get_template("script.j2").render(interpreter=interpreter, body=body)
    return File(path, text, 0o755)


def base_environment(docker_env: list[tuple[str, str]] | None = None) -> list[File | Link]:
    """The files every image gets before ``%post`` runs: actions, base env, links."""
    out: list[File | Link] = [File(f"{SD}/actions/{a}", _static(f"actions/{a}"), 0o755)
                              for a in ACTIONS]
    out += [
        File(f"{SD}/env/01-base.sh", _static("env/01-base.sh"), 0o755),
        File(f"{SD}/env/99-base.sh", _static("env/99-base.sh"), 0o755),
        Link(".exec", f"{SD}/actions/exec"),
        Link(".run", f"{SD}/actions/run"),
        Link(".shell", f"{SD}/actions/shell"),
        Link(".test", f"{SD}/actions/test"),
        Link("singularity", f"{SD}/runscript"),
        Link("environment", f"{SD}/env/90-environment.sh"),
    ]
    if docker_env:
        text = _templates.get_template("env/10-docker2singularity.sh.j2").render(env=docker_env)
        out.append(File(f"{SD}/env/10-docker2singularity.sh", text, 0o755))
    return out


def labels(stage: Stage, *, arch: str, build_date: str, extra: dict[str, str]) -> dict[str, str]:
    """``labels.json``: Apptainer's build labels, then the stage's ``%labels``, then ``extra``
    (lines that ``%post`` appended to ``$APPTAINER_LABELS``)."""
    out = {
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.build-arch": arch,
        "org.label-schema.build-date": build_date,
        "org.label-schema.usage.singularity.deffile.bootstrap": stage.bootstrap,
        "org.hpcstack.builder": f"hpcstack {__version__}",
    }
    if stage.from_:
        out["org.label-schema.usage.singularity.deffile.from"] = stage.from_
    if stage.help:
        out["org.label-schema.usage"] = f"/{SD}/runscript.help"
        out["org.label-schema.usage.singularity.runscript.help"] = f"/{SD}/runscript.help"
    out.update(dict(stage.labels))
    out.update(extra)
    return out


def final_files(stage: Stage, *, deffile_text: str, label_map: dict[str, str]) -> list[File]:
    """The files written after ``%post``: environment, scripts, help, labels, definition."""
    env_body = stage.environment.body.rstrip("\n") if stage.environment else ""
    out = [
        File(f"{SD}/env/90-environment.sh",
             _templates.get_template("env/90-environment.sh.j2").render(body=env_body), 0o755),
        File(f"{SD}/labels.json", json.dumps(label_map, indent=4) + "\n"),
        File(f"{SD}/Singularity", deffile_text),
    ]
    for section, name in ((stage.runscript, "runscript"), (stage.startscript, "startscript"),
                          (stage.test, "test")):
        if section is not None:
            out.append(script_file(f"{SD}/{name}", section))
    if stage.help is not None:
        help_text = textwrap.dedent(stage.help.body).strip("\n") + "\n"
        out.append(File(f"{SD}/runscript.help", help_text))
    return out


def parse_label_lines(text: str) -> dict[str, str]:
    """Labels that ``%post`` appended to ``$APPTAINER_LABELS``: ``KEY VALUE`` per line."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            out[key] = value.strip()
    return out


def docker_runscript(entrypoint: list[str] | None, cmd: list[str] | None) -> str:
    """The runscript of an image built from an OCI image without ``%runscript``."""
    if not entrypoint and not cmd:
        return ""
    ep = shlex.join(entrypoint) + " " if entrypoint else ""
    return _templates.get_template("docker-runscript.sh.j2").render(
        entrypoint=ep, cmd=shlex.join(cmd) if cmd else "")
