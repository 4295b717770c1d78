"""A user's own images as modules, deployed exactly as the site deploys its own.

``u2cb module -n NAME`` downloads the user's image and hands it to the same
:func:`~hpcstack.modules.deploy.deploy` that ``hpcstack modules deploy`` runs, into
a tree under the user's home.  The user's own site file there lists what they made
modules of, so removing one, or refreshing one after a rebuild, is one deploy
away.  The runtime settings (runtime, binds, environment, module system) come from
the center's site file when it is readable: a user's module runs the way the
center's modules run on that cluster.

    ~/.local/share/hpcstack/modules/    ($XDG_DATA_HOME/hpcstack/modules: `module use` it)
        NAME/latest.lua  NAME/latest     the Lmod and Tcl modulefiles, side by side
    ~/.local/share/hpcstack/user/
        modules.yaml                     the user's apps (written here, never by hand)
        sources/NAME.sif                 the downloaded image, checksum-checked
        bin/ images/ state.json          as ``hpcstack modules deploy`` writes them

Example::

    site = user_site(center=load_site(Path("/etc/hpcstack/modules.yaml")))
    add(site, "mytools", Path("mytools.sif"), commands=["mytool"])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError

from hpcstack import yamlfile
from hpcstack.errors import UserError
from hpcstack.files import write_atomic
from hpcstack.modules.config import App, AppList, Site
from hpcstack.modules.deploy import Report, deploy, read_state
from hpcstack.modules.deploy import remove as remove_deployed
from hpcstack.modules.render import Layout

VERSION = "latest"
#: What a user's tree takes from the center's site file; the rest is the user's own.
CENTER_SETTINGS = ("module_system", "runtime", "runtime_path", "home_root", "binds", "env",
                   "discover", "shadow_commands", "launchers", "shell_functions")


def data_home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_DATA_HOME", "")
    if not xdg.startswith("/"):
        xdg = str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(xdg) / "hpcstack"


def user_site(center: Site | None = None, home: Path | None = None) -> Site:
    """The user's site: the center's runtime settings, the user's tree and apps."""
    home = home or data_home()
    root = home / "user"
    apps_file = root / "modules.yaml"
    apps: list[App] = []
    if apps_file.exists():
        apps = yamlfile.parse(yamlfile.read(apps_file), AppList, str(apps_file)).apps
    settings = {k: getattr(center, k) for k in CENTER_SETTINGS} if center else {}
    return Site(**settings, root=str(root), modulepath=str(home / "modules"),
                spider_cache=False, apps=apps)


def sources(site: Site) -> Path:
    return Path(site.root) / "sources"


def source_of(site: Site, name: str) -> Path:
    return sources(site) / f"{name}.sif"


def has_module(site: Site, name: str) -> bool:
    return any(a.name == name for a in site.apps)


def add(site: Site, name: str, image: Path, commands: list[str] | None = None) -> Report:
    """Deploy ``image`` as module ``name/latest`` (replacing an older one of that name).

    The user's site file is written only once the deploy succeeded, so a failed
    one (no commands found, a bad image) leaves the user's modules as they were.
    """
    try:
        app = App(name=name, version=VERSION, image=str(image), state="default",
                  commands=commands or "discover")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "--commands" if first["loc"][0] == "commands" else name
        raise UserError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
    apps = [a for a in site.apps if a.name != name] + [app]
    updated = site.model_copy(update={"apps": apps})
    report = deploy(updated, only=[name])
    _write_apps(updated)
    return report


def remove(site: Site, name: str) -> None:
    """Remove module ``name``: its modulefiles, wrappers, deployed image and source."""
    deployed = any(d.name == name for d in read_state(Layout.of(site)).values())
    if not deployed and not has_module(site, name):
        raise UserError(f"{name}: you have no module of that name")
    if deployed:
        remove_deployed(site, [name])
    _write_apps(site.model_copy(update={"apps": [a for a in site.apps if a.name != name]}))
    source_of(site, name).unlink(missing_ok=True)


def _write_apps(site: Site) -> None:
    data = {"apps": [a.model_dump(include={"name", "version", "image", "commands", "state"})
                     for a in site.apps]}
    write_atomic(Path(site.root) / "modules.yaml",
                 "# Written by `u2cb module`; edit with it, not by hand.\n"
                 + yaml.safe_dump(data, sort_keys=False))
