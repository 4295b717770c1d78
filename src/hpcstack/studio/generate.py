"""Write one Open OnDemand batch-connect app per studio entry.

Every app gets ``manifest.yml``, ``form.yml`` and ``submit.yml.erb`` (from
``templates/common``) and the files of its kind (``templates/KIND``: the
``template/*.sh.erb`` scripts and ``view.html.erb``; kinds without an ``after.sh`` of their
own get ``common/after.sh.erb``, which waits for the port). TensorBoard apps also get
``template/tensorboard_gate.py`` (this package's), which puts the session password in
front of TensorBoard.  Every kind uses OOD's
``basic`` template: desktops run their VNC server inside the desktop image themselves.
Each app is rendered into a temporary directory beside the output and renamed into
place, so a failed run changes nothing.
The studio file's ``u2cb:`` entry adds the U2CB page, a Passenger app
(``templates/u2cb``: ``manifest.yml``, the ``app.js`` launcher, ``portal.yaml``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from hpcstack.errors import UserError
from hpcstack.modules.config import Site
from hpcstack.studio.command import bash_array, container_argv, image_argv, image_of
from hpcstack.studio.config import Studio, StudioApp, U2cbPortal

TITLES = {"jupyter": "Jupyter", "vscode": "VS Code", "tensorboard": "TensorBoard",
          "rstudio": "RStudio Server"}
COMMON = ("manifest.yml", "form.yml", "submit.yml.erb")


@dataclass(frozen=True)
class KindSpec:
    """What a kind runs in its image: the arguments and extra binds (shell variables allowed)."""

    args: tuple[str, ...]
    binds: tuple[str, ...] = ()


KIND_SPECS = {
    "jupyter": KindSpec(("jupyter", "notebook", "--config=${config}")),
    "vscode": KindSpec(("code-server", "--config", "${config}", "--disable-telemetry",
                        "--disable-update-check", "${workdir}")),
    "tensorboard": KindSpec(("python3", "${session}/tensorboard_gate.py", "--password-file",
                             "${session}/tensorboard.passwd", "--logdir", "/logs",
                             "--host", "0.0.0.0", "--port", "${port}"), ("${logdir}:/logs",)),
    "rstudio": KindSpec(("rserver", "--www-port=${port}", "--auth-none=0",
                         "--auth-pam-helper-path=${auth_helper}",
                         "--auth-encrypt-password=0", "--server-user=${USER}",
                         "--server-data-dir=${data_dir}/tmp",
                         "--secure-cookie-key-file=${cookie_key}"),
                        ("${data_dir}/run:/var/run/rstudio-server",
                         "${data_dir}/lib:/var/lib/rstudio-server")),
}


def environment() -> Environment:
    """Jinja2 over the package's templates; ``{#`` is left alone (bash uses ``${#x}``)."""
    env = Environment(loader=PackageLoader("hpcstack.studio", "templates"),
                      undefined=StrictUndefined, keep_trailing_newline=True,
                      comment_start_string="{##", comment_end_string="##}")
    env.filters["q"] = lambda v: json.dumps(v, ensure_ascii=False)
    return env


def app_argv(studio: Studio, app: StudioApp, site: Site | None) -> list[str] | None:
    """The container command an app's script.sh runs; None when it starts through a module."""
    if app.kind == "desktop":
        words = (app.command or "").split()
        return None if app.module else container_argv(studio, app, site, words)
    spec = KIND_SPECS[app.kind]
    return container_argv(studio, app, site, list(spec.args), list(spec.binds))


def desktop_argv(studio: Studio) -> list[str] | None:
    """The desktop image's command: ``desktop.sh`` (staged beside the session) inside it."""
    if studio.desktop is None:
        return None
    return image_argv(studio, studio.desktop, ["bash", "${session}/desktop.sh"])


def _modulepath(studio: Studio, site: Site | None) -> str:
    if site is None:
        return ""
    return f"{site.root}/{'tcl' if site.module_system == 'tcl' else 'lmod'}"


def _context(studio: Studio, app: StudioApp, site: Site | None, source: str) -> dict:
    argv = app_argv(studio, app, site)
    title = app.title or TITLES.get(app.kind, app.name)
    image = image_of(app, site)
    return {
        "studio": studio, "app": app, "kind": app.kind, "source": source,
        "app_title": title,
        "description": app.description or f"{title} in a container ({os.path.basename(image)})",
        "presets": studio.app_presets(app),
        "template": "basic",
        "extra_fields": ["logdir"] if app.kind == "tensorboard" else [],
        "container_line": bash_array("container", argv) if argv else "",
        "desktop_line": bash_array("desktop", desktop_argv(studio) or []),
        "image_note": f"the module {app.module}" if app.module else image,
        "modulepath": _modulepath(studio, site),
    }


def render_app(studio: Studio, app: StudioApp, site: Site | None,
               source: str = "the studio file") -> dict[str, str]:
    """Relative path -> text for every file of one app (pure)."""
    env = environment()
    ctx = _context(studio, app, site, source)
    names = [f"common/{n}.j2" for n in COMMON]
    names += [n for n in env.list_templates() if n.startswith(f"{app.kind}/")]
    files = {}
    for name in names:
        rel = name.split("/", 1)[1].removesuffix(".j2")
        files[rel] = env.get_template(name).render(ctx)
    if app.kind == "tensorboard":  # TensorBoard has no login: the gate adds one
        gate = resources.files("hpcstack.studio").joinpath("tensorboard_gate.py")
        files["template/tensorboard_gate.py"] = gate.read_text()
    if "template/after.sh.erb" not in files:
        files["template/after.sh.erb"] = env.get_template("common/after.sh.erb.j2").render(ctx)
    return files


def render_portal(portal: U2cbPortal, source: str = "the studio file") -> dict[str, str]:
    """The U2CB page's Passenger app: ``manifest.yml``, the ``app.js`` launcher and the
    page's settings (pure)."""
    env = environment()
    ctx = {"portal": portal, "source": source, "python": portal.python or sys.executable}
    return {n: env.get_template(f"u2cb/{n}.j2").render(ctx)
            for n in ("manifest.yml", "app.js", "portal.yaml")}


def generate(studio: Studio, site: Site | None, outdir: Path, only: list[str] | None = None,
             source: str = "the studio file") -> list[Path]:
    """Write the apps (all, or those named in ``only``) under ``outdir``; their directories."""
    apps = [a for a in studio.apps if not only or a.name in only]
    portal = studio.u2cb
    missing = set(only or []) - {a.name for a in studio.apps} - ({portal.name} if portal else set())
    if missing:
        raise UserError(f"--only {sorted(missing)[0]}: no such app in {source}")
    rendered = {a.name: render_app(studio, a, site, source) for a in apps}  # all or nothing
    if portal is not None and (not only or portal.name in only):
        rendered[portal.name] = render_portal(portal, source)
    outdir.mkdir(parents=True, exist_ok=True)
    return [_install(outdir, name, files) for name, files in rendered.items()]


def _install(outdir: Path, name: str, files: dict[str, str]) -> Path:
    """Write ``files`` to a temporary directory, then swap it in for ``outdir/name``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=outdir))
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o644)
        tmp.chmod(0o755)
        for sub in tmp.rglob("*"):
            if sub.is_dir():
                sub.chmod(0o755)
        target = outdir / name
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=outdir))
            os.replace(target, old / name)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
