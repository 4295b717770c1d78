"""Publishing built app images as modules (I/O).

The catalog's apps become entries of a modules site file (``NAME`` /
``VERSION-TARGET[-SM_XX]``, the built SIF, commands, MPI model); entries the
catalog does not own are kept as they are.  The file is validated, written
atomically, then :func:`hpcstack.modules.deploy` makes the module tree match.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hpcstack.catalog.build import OCI_STATE, read_state, select
from hpcstack.catalog.expand import AppImage, Expanded
from hpcstack.errors import UserError
from hpcstack.files import write_atomic
from hpcstack.modules import Report, deploy, parse_site


def site_entry(app: AppImage, image: Path) -> dict[str, object]:
    """One app variant as a site-file app."""
    spec, base = app.spec, app.base.spec
    entry: dict[str, object] = {
        "name": spec.name, "version": app.module_version, "image": str(image),
        "commands": list(spec.commands) or "discover",
        "mpi": spec.mpi or (base.mpi.name if base.mpi else "none"),
    }
    if app.gpu_arch:
        entry["gpu"] = "nvidia"
    if spec.description:
        entry["description"] = spec.description
    return entry


def merge(site: dict, entries: list[dict[str, object]]) -> dict:
    """The site document with ``entries`` replacing apps of the same module, others kept."""
    ours = {(e["name"], e["version"]) for e in entries}
    kept = [a for a in site.get("apps") or []
            if (a.get("name"), str(a.get("version"))) not in ours]
    return {**site, "apps": kept + entries}


def _read_site(path: Path, root: str | None) -> dict:
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: cannot read ({exc})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of settings")
    else:
        data = {}
    if root is not None:
        data["root"] = root
    return data


def built_sif(out: Path, tag: str) -> Path | None:
    """The SIF of the definition route, else the one made from the registry (``--format oci``)."""
    for name, state in (("sif", "state.json"), ("oci.sif", OCI_STATE)):
        entry = read_state(out, state).get(tag, {})
        entry = entry.get("sif", {}) if name == "oci.sif" else entry
        if entry and (out / f"{tag}.{name}").exists():
            return out / f"{tag}.{name}"
    return None


def publish(expanded: Expanded, out: Path, site_path: Path, *, only: list[str] | None = None,
            arch: str | None = None, root: str | None = None, warn=None) -> Report:
    """Update the site file with every built app variant, then deploy it."""
    apps = [i for i in select(expanded, only, arch) if isinstance(i, AppImage)]
    if not apps:
        raise UserError("nothing to publish: no app image selected")
    images = {a.tag: built_sif(out, a.tag) for a in apps}
    missing = [tag for tag, path in images.items() if path is None]
    if missing:
        raise UserError(f"{missing[0]}: not built yet (run hpcstack catalog build)")
    entries = [site_entry(a, images[a.tag].resolve()) for a in apps]
    document = merge(_read_site(site_path, root), entries)
    text = yaml.safe_dump(document, sort_keys=False)
    site = parse_site(text, str(site_path), site_path.resolve().parent)
    write_atomic(site_path, "# Updated by hpcstack catalog publish.\n" + text)
    return deploy(site, warn=warn)
