"""``hpcstack catalog render|build|publish|list``: the site's image catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The image catalog: render, build and publish base and app images.",
                  no_args_is_help=True)
out = Console()
err = Console(stderr=True)

CatalogOpt = Annotated[Path, typer.Option("--catalog", "-c", envvar="HPCSTACK_CATALOG",
                                          help="The catalog file (YAML).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Where recipes, images and "
                                      "state.json go.")]
OnlyOpt = Annotated[list[str] | None, typer.Option("--only", help="A base or app name, or a "
                                                   "tag; repeat for several.")]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="x86_64 | aarch64 | ppc64le | all "
                                             "(build, publish: default the host's)")]
RegistryOpt = Annotated[str | None, typer.Option("--registry", help="The site registry "
                                                 "(default: the catalog's registry).")]
DEFAULT_CATALOG = Path("/etc/hpcstack/catalog.yaml")


def _expanded(path: Path):  # type: ignore[no-untyped-def]
    from hpcstack.catalog import expand, load_catalog

    spec = load_catalog(path)
    return spec, expand(spec, path.name)


def _arch(arch: str | None) -> str | None:
    from hpcstack.catalog.build import host_arch

    return None if arch == "all" else arch or host_arch()


def _say(message: str) -> None:
    err.print(message, highlight=False)


@app.command("list")
def list_cmd(catalog: CatalogOpt = DEFAULT_CATALOG,
             output: Annotated[Path | None, typer.Option(
                 "--out", "-o", help="A build's output: show per tag what is built (sif), "
                 "pushed (oci) and stale, and why.")] = None,
             registry: RegistryOpt = None,
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every image of the matrix: tag, kind, architecture, target, base (and its state)."""
    from hpcstack.catalog import AppImage
    from hpcstack.catalog.build import oci_status, sif_status

    spec, expanded = _expanded(catalog)
    rows = [{"tag": i.tag, "kind": "app" if isinstance(i, AppImage) else "base",
             "flavour": i.flavour, "arch": i.arch,
             "target": getattr(i, "cpu_target", ""), "gpu": getattr(i, "gpu_arch", None) or "",
             "base": (i.base.tag if isinstance(i, AppImage)
                      else i.parent.tag if i.parent else "")} for i in expanded.images()]
    if output is not None:
        sif = sif_status(expanded.images(), output)
        pushed = oci_status(expanded.images(), output, registry or spec.registry)
        for row in rows:
            row |= {"sif": sif[row["tag"]], "oci": pushed[row["tag"]]}
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    columns = (["tag", "kind", "sif", "oci"] if output is not None  # the state, readable
               else ["tag", "kind", "flavour", "arch", "target", "gpu", "base"])
    table = Table(*columns)
    for r in rows:
        table.add_row(*(str(r[c]) for c in columns))
    out.print(table)


@app.command("render")
def render_cmd(catalog: CatalogOpt = DEFAULT_CATALOG,
               output: OutOpt = Path("recipes"),
               images: Annotated[str | None, typer.Option(help="Where base SIFs are, for "
                                                          "Bootstrap: localimage (default: "
                                                          "OUT)")] = None) -> None:
    """Write TAG.def and TAG.Dockerfile for every image of the matrix."""
    from hpcstack.catalog import render_image
    from hpcstack.files import write_atomic

    spec, expanded = _expanded(catalog)
    where = images or str(output.resolve())
    count = 0
    for image in expanded.images():
        for fmt in ("def", "docker"):
            recipe = render_image(image, fmt, where, spec.registry)
            write_atomic(output / recipe.filename, recipe.text)
            count += 1
    _say(f"{count} recipes for {len(expanded.images())} images in {output}")


@app.command("build")
def build_cmd(
    catalog: CatalogOpt = DEFAULT_CATALOG,
    output: OutOpt = Path("images"),
    only: OnlyOpt = None,
    arch: ArchOpt = None,
    force: Annotated[bool, typer.Option("--force", "-F", help="Rebuild even if unchanged.")
                     ] = False,
    notest: Annotated[bool, typer.Option("--notest", "-T", help="Skip the catalog tests.")
                      ] = False,
    slurm: Annotated[bool, typer.Option("--slurm", help="Build as Slurm jobs.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="sif: definitions -> SIF; oci: "
                                     "Dockerfiles -> buildah -> the registry -> TAG.oci.sif; "
                                     "both.")] = "sif",
    registry: RegistryOpt = None,
    cert_dir: Annotated[str | None, typer.Option(help="The registry's CA (a directory of "
                                                 "*.crt), for buildah and skopeo.")] = None,
    tls_verify: Annotated[bool, typer.Option(help="Check the registry's certificate.")
                          ] = True,
    storage_driver: Annotated[str, typer.Option(help="buildah's storage driver (overlay, "
                                                "vfs).")] = "overlay",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Build what changed (keyed by the recipe and its base), bases first."""
    from hpcstack.catalog.build import OciOptions, build_catalog
    from hpcstack.catalog.oci import Registry, Store

    spec, expanded = _expanded(catalog)
    oci = OciOptions(registry or spec.registry, Registry(cert_dir, tls_verify),
                     Store.default(storage_driver))
    report = build_catalog(expanded, output, only=only, arch=_arch(arch), force=force,
                           run_test=not notest, slurm=slurm, fmt=fmt, registry=oci, say=_say)
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
        return
    for tag in report.built:
        _say(f"[green]built[/] {tag} ({report.sizes[tag] / 2**20:.1f} MiB)")
    for tag in report.pushed:
        _say(f"[green]pushed[/] {report.digests[tag]}")
    if fmt != "sif":
        _say(f"{len(report.pushed)} pushed, {len(report.unchanged)} unchanged in the registry")
    if fmt != "oci":
        _say(f"{len(report.built)} built, {len(report.skipped)} up to date")
    _say(f"in {report.seconds:.1f} s")


@app.command("publish")
def publish_cmd(
    site: Annotated[Path, typer.Option("--site", "-s", help="The modules site file to "
                                       "update (created if missing).")],
    catalog: CatalogOpt = DEFAULT_CATALOG,
    output: OutOpt = Path("images"),
    only: OnlyOpt = None,
    arch: ArchOpt = None,
    root: Annotated[str | None, typer.Option(help="Set the site's module root.")] = None,
) -> None:
    """Add the built app images to a modules site file and deploy it."""
    from hpcstack.catalog.publish import publish

    _, expanded = _expanded(catalog)
    report = publish(expanded, output, site, only=only, arch=_arch(arch), root=root,
                     warn=lambda m: err.print(f"[yellow]warning:[/] {m}", highlight=False))
    for d in report.deployed:
        _say(f"[green]deployed[/] {d.module}: {' '.join(d.commands)}")
    _say(f"{len(report.deployed)} modules in {report.seconds:.2f} s ({site})")
