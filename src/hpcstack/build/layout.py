"""What an image holds under ``/.singularity.d``, laid out as Apptainer does.

Pure: turns a definition stage into a list of files and links; the builder
writes them inside the build namespace.  Following Apptainer's layout is what
lets Apptainer (and our Charliecloud adapter, through the action scripts) run
the images we build::

    /.singularity.d/actions/{exec,run,shell,start,test}
    /.singularity.d/env/{01-base,10-docker2singularity,90-environment,94-appsbase,
                         95-apps,99-base,99-runtimevars}.sh
    /.singularity.d/{runscript,startscript,test,runscript.help,labels.json,Singularity}
    /.singularity.d/bootstrap_history/ApptainerN  (a base image's definitions)
    /.singularity.d/libs/  (where runtimes bind host libraries, e.g. GPU drivers)
    /singularity -> .singularity.d/runscript, /environment -> ..., /.exec -> ...

and the inspect-metadata JSON object that ``apptainer inspect`` reads from the SIF.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import jinja2

from hpcstack import __version__
from hpcstack.deffile import Script, Stage
from hpcstack.deffile.parser import split_label

SD = ".singularity.d"
ACTIONS = ("exec", "run", "shell", "start", "test")

# Directories and empty files that runtimes bind over; they must exist in the image.
MOUNT_DIRS = ("proc", "sys", "dev", "tmp", "var/tmp", "home", "root", "etc", "mnt", "opt")
MOUNT_FILES = ("etc/hosts", "etc/resolv.conf", "etc/passwd", "etc/group")
ENV_STATIC = ("01-base.sh", "95-apps.sh", "99-base.sh", "99-runtimevars.sh")


@dataclass(frozen=True)
class File:
    path: str  # relative to the root filesystem
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class Link:
    path: str
    target: str


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class Default:
    """A file written only where the image has none (a base image's own is kept)."""

    path: str
    content: str
    mode: int = 0o755


@dataclass(frozen=True)
class Append:
    """Text added to the end of a file the image has, or the whole of a new one.

    Apptainer appends ``%environment`` to a base image's ``90-environment.sh``
    rather than replacing it, so the base's variables stay set.
    """

    path: str
    content: str  # appended when the file exists
    fresh: str  # written when it does not
    mode: int = 0o755


Item = File | Link | Dir | Default | Append


def _shell_dq(value: str) -> str:
    """Escape ``value`` for use inside a double-quoted shell string."""
    for ch in ("\\", '"', "$", "`"):
        value = value.replace(ch, "\\" + ch)
    return value


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", '"': '\\"', "\\": "\\\\"}


def go_quote(value: str) -> str:
    """``value`` as Go's ``%q`` (``strconv.Quote``) writes it, quotes included.

    Apptainer writes each OCI ``ENV`` value this way, after escaping it for the
    shell; matching it keeps ``10-docker2singularity.sh`` byte for byte the same.
    """
    out = []
    for ch in value:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("hpcstack.build", "templates"),
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
    undefined=jinja2.StrictUndefined,
)
_templates.filters["shell_dq"] = _shell_dq
_templates.filters["go_quote"] = go_quote


def _static(name: str) -> str:
    return resources.files("hpcstack.build").joinpath("templates", name).read_text()


def shebang_and_body(script: Script) -> tuple[str, str]:
    """Apptainer's rule: a ``#!`` first line is the interpreter, else ``-c PROGRAM``, else sh."""
    body = script.body
    if body.strip().startswith("#!"):
        first, _, body = body.lstrip().partition("\n")
        return first.strip(), body
    return f"#!{script.interpreter or '/bin/sh'}", body


def script_file(path: str, script: Script) -> File:
    """A section as an executable script: its interpreter line, a blank line, the body."""
    shebang, body = shebang_and_body(script)
    text = _templates.get_template("script.j2").render(
        shebang=shebang, body=body.rstrip("\n") + "\n")
    return File(path, text, 0o755)


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def docker_env(entries: list[str]) -> list[tuple[str, str | None]]:
    """An OCI config's ``Env`` as Apptainer reads it: ``KEY=VALUE`` or a bare ``KEY``
    (None: set to empty where unset); names that are not shell names are skipped."""
    out: list[tuple[str, str | None]] = []
    for entry in entries:
        key, sep, value = entry.partition("=")
        if ENV_NAME.fullmatch(key):
            out.append((key, value if sep else None))
    return out


def environment_script(body: str) -> str:
    """``90-environment.sh`` as a bootstrap leaves it, ``body`` following its header."""
    return _templates.get_template("env/90-environment.sh.j2").render(body=body)


def base_environment(docker_env: list[tuple[str, str | None]] | None = None, *,
                     fresh: bool = True) -> list[Item]:
    """The files every image gets before ``%post`` runs: actions, base env, links.

    ``fresh``: the root came from a bootstrap (not a base image), so its
    ``/etc/hosts`` and ``/etc/resolv.conf`` are emptied as Apptainer does — the
    runtime binds the host's over them; the build host's never stays in the image.
    """
    out: list[Item] = [Dir(f"{SD}/libs"), Dir(f"{SD}/actions"), Dir(f"{SD}/env")]
    out += [File(f"{SD}/actions/{a}", _static(f"actions/{a}"), 0o755) for a in ACTIONS]
    out += [File(f"{SD}/env/{name}", _static(f"env/{name}"), 0o755) for name in ENV_STATIC]
    out += [
        File(f"{SD}/env/94-appsbase.sh", "", 0o755),  # SCIF apps' globals; none here
        Default(f"{SD}/env/90-environment.sh", environment_script("")),  # %environment's
        Default(f"{SD}/runscript", _static("runscript")),
        Default(f"{SD}/startscript", _static("startscript")),
        Link(".exec", f"{SD}/actions/exec"),
        Link(".run", f"{SD}/actions/run"),
        Link(".shell", f"{SD}/actions/shell"),
        Link(".test", f"{SD}/actions/test"),
        Link("singularity", f"{SD}/runscript"),
        Link("environment", f"{SD}/env/90-environment.sh"),
    ]
    for name in MOUNT_FILES[:2]:  # etc/hosts, etc/resolv.conf
        out.append(File(name, "", 0o644) if fresh else Default(name, "", 0o644))
    if docker_env:
        text = _templates.get_template("env/10-docker2singularity.sh.j2").render(env=docker_env)
        out.append(File(f"{SD}/env/10-docker2singularity.sh", text, 0o755))
    return out


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def build_date(now: datetime) -> str:
    """Apptainer's build-date label, ``Monday_30_November_2026_5:33:38_UTC`` (any locale)."""
    return (f"{_DAYS[now.weekday()]}_{now.day}_{_MONTHS[now.month - 1]}_{now.year}_"
            f"{now.hour}:{now.minute}:{now.second}_{now.tzname() or 'UTC'}")


def labels(stage: Stage, *, arch: str, build_date: str, extra: Mapping[str, str],
           existing: Mapping[str, str] | None = None) -> dict[str, str]:
    """``labels.json`` in Apptainer's order, keys sorted.

    The base image's labels, then lines ``%post`` appended to
    ``$APPTAINER_LABELS``, then the build's own labels (which replace both),
    then ``%labels``.  Those replace a key already there, as with ``apptainer
    build --force`` (without it Apptainer keeps the old value): an image built
    on a base image must be able to say what it is itself.  Header keys become
    ``org.label-schema.usage.singularity.deffile.KEY`` (lower case), and
    ``org.label-schema.usage.hpcstack.version`` names the builder where
    Apptainer writes ``…usage.apptainer.version``.
    """
    out = dict(existing or {})
    out.update(extra)
    out.update({
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.build-date": build_date,
        "org.label-schema.usage.hpcstack.version": __version__,
    })
    if stage.help is not None and stage.help.body.strip():
        out["org.label-schema.usage"] = f"/{SD}/runscript.help"
        out["org.label-schema.usage.apptainer.runscript.help"] = f"/{SD}/runscript.help"
    for key, value in stage.header:
        out[f"org.label-schema.usage.singularity.deffile.{key.lower()}"] = value
    out["org.label-schema.build-arch"] = arch
    out.update(stage.labels)
    return dict(sorted(out.items()))


def labels_json(label_map: Mapping[str, str]) -> str:
    """``labels.json`` as Apptainer writes it: keys sorted, tab-indented."""
    return json.dumps(dict(sorted(label_map.items())), indent="\t")


def final_files(stage: Stage, *, deffile_text: str, label_map: Mapping[str, str],
                force: bool = False) -> list[Item]:
    """The files written after ``%post``: environment, scripts, help, labels, definition.

    As Apptainer: ``%environment`` is appended to the ``90-environment.sh`` the
    image has (a base image's variables stay), and a base image's
    ``runscript.help`` is kept unless ``force`` (``--force``).  The base's
    ``Singularity`` is moved to ``bootstrap_history/`` by the builder first.
    """
    out: list[Item] = [
        File(f"{SD}/labels.json", labels_json(label_map)),
        File(f"{SD}/Singularity", deffile_text),
    ]
    env_body = stage.environment.body.rstrip("\n") if stage.environment else ""
    if env_body.strip():
        out.append(Append(f"{SD}/env/90-environment.sh", f"\n{env_body}\n",
                          environment_script(env_body)))
    for section, name in ((stage.runscript, "runscript"), (stage.startscript, "startscript"),
                          (stage.test, "test")):
        if section is not None and section.body.strip():
            out.append(script_file(f"{SD}/{name}", section))
    if stage.help is not None and stage.help.body.strip():
        kind = File if force else Default
        out.append(kind(f"{SD}/runscript.help", stage.help.body.rstrip("\n") + "\n", 0o644))
    return out


HISTORY = f"{SD}/bootstrap_history"


def history_name(existing: int) -> str:
    """Where a base image's definition goes: ``Apptainer0``, then ``Apptainer1``, ...
    (numbered by how many the history already holds, as Apptainer does)."""
    return f"Apptainer{existing}"


# What ``apptainer inspect --all`` reads for each attribute of its JSON object.
INSPECT_FILES = {"deffile": "Singularity", "helpfile": "runscript.help",
                 "runscript": "runscript", "startscript": "startscript", "test": "test"}
INSPECT_ENV = ("10-docker*.sh", "9*-environment.sh")


def inspect_text(text: str) -> str:
    """A file as ``apptainer inspect`` shows it: trailing newlines dropped."""
    return text.rstrip("\n")


def inspect_metadata(files: Mapping[str, str]) -> dict:
    """Apptainer's ``inspect-metadata.json`` object for an image's ``/.singularity.d``.

    ``files`` maps names relative to ``/.singularity.d`` (``labels.json``,
    ``env/90-environment.sh``, ...) to their text, for those the image has; the
    environment files are those ``INSPECT_ENV`` matches, in name order.  Empty
    attributes are left out, as Apptainer's ``omitempty`` does.
    """
    attributes: dict = {}
    env = {f"/{SD}/{name}": inspect_text(text) for name, text in sorted(files.items())
           if name.startswith("env/")}
    if env:
        attributes["environment"] = env
    labels = json.loads(files["labels.json"]) if "labels.json" in files else {}
    if labels:
        attributes["labels"] = dict(sorted(labels.items()))
    for attribute in ("runscript", "test", "helpfile", "deffile", "startscript"):
        text = inspect_text(files.get(INSPECT_FILES[attribute], ""))
        if text:
            attributes[attribute] = text
    return {"data": {"attributes": attributes}, "type": "container"}


def go_json(value: object) -> str:
    """JSON as Go's ``encoding/json`` writes it: compact, with ``<``, ``>``, ``&`` escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def parse_label_lines(text: str) -> dict[str, str]:
    """Labels that ``%post`` appended to ``$APPTAINER_LABELS``: ``KEY VALUE`` per line,
    read as ``%labels`` is."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, value = split_label(line)
        if key and not key.startswith("#"):
            out[key] = value
    return out


def docker_runscript(entrypoint: list[str] | None, cmd: list[str] | None) -> str:
    """The runscript of an image built from an OCI image without ``%runscript``."""
    if not entrypoint and not cmd:
        return ""
    ep = shlex.join(entrypoint) + " " if entrypoint else ""
    return _templates.get_template("docker-runscript.sh.j2").render(
        entrypoint=ep, cmd=shlex.join(cmd) if cmd else "")
