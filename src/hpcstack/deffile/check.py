"""Validation: the rules a definition must meet beyond its syntax.

``validate`` checks a model (parsed or built in code); ``check`` reports every
problem of a text, syntax and semantic, so a user can fix them all in one go.
"""

from __future__ import annotations

from collections.abc import Iterator

from hpcstack.deffile.model import SCRIPT_SECTIONS, DefFileError, Definition, Stage, show

# Agents that build from an existing image or archive named by ``From``.
_NEEDS_FROM = (
    "docker",
    "docker-daemon",
    "docker-archive",
    "oci",
    "oci-archive",
    "localimage",
    "library",
    "shub",
    "oras",
)
# Agents Apptainer knows; which of them the builder supports is its own business.
BOOTSTRAP_AGENTS = frozenset(
    (*_NEEDS_FROM, "debootstrap", "scratch", "yum", "zypper", "busybox", "arch")
)
# Header keys an agent cannot work without.  Apptainer also wants MirrorURL for
# debootstrap; we default to the host's apt sources, so it stays optional.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    **{agent: ("From",) for agent in _NEEDS_FROM},
    "debootstrap": ("OSVersion",),
}


def _stage_header(stage: Stage) -> Iterator[tuple[int, str]]:
    """Problems with the Bootstrap agent and the keys it requires."""
    agent = stage.get("Bootstrap")
    if agent is None:
        yield stage.line, "missing Bootstrap header"
        return
    if not agent:
        yield stage.line, "empty Bootstrap header"
        return
    if agent.lower() not in BOOTSTRAP_AGENTS:
        yield stage.line, f"unknown bootstrap agent {show(agent)}"
        return
    for key in REQUIRED_KEYS.get(agent.lower(), ()):
        value = stage.get(key)
        if value is None:
            yield stage.line, f"missing {key} header (required by bootstrap agent {agent.lower()})"
        elif not value:
            yield stage.line_of(key), f"empty {key} header"


def _stage_scripts(stage: Stage) -> Iterator[tuple[int, str]]:
    """Section arguments Apptainer would refuse at build time."""
    for name in SCRIPT_SECTIONS:
        script = stage.script(name)
        if script and "-c" in script.params and not script.interpreter:
            yield script.line, f"%{name} argument -c needs a command after it"


def _stage_files(stage: Stage, earlier: set[str]) -> Iterator[tuple[int, str]]:
    """``%files from NAME`` must name a stage defined before this one."""
    for section in stage.files:
        if section.stage is not None and section.stage not in earlier:
            yield section.line, f"%files from {show(section.stage)}: no earlier stage has that name"


def _problems(definition: Definition) -> Iterator[tuple[int, str]]:
    if not definition.stages:
        yield 0, "empty definition file (no Bootstrap header)"
    names: dict[str, int] = {}
    for index, stage in enumerate(definition.stages):
        if index == 0 and len(definition.stages) > 1 and stage.get("Bootstrap") is None:
            yield stage.line, "text before the first Bootstrap header"
        else:
            yield from _stage_header(stage)
        yield from _stage_scripts(stage)
        yield from _stage_files(stage, set(names))
        name = stage.name
        if name is None:
            continue
        line = stage.line_of("Stage")
        if not name:
            yield line, "empty Stage name"
        elif name in names:
            yield line, f"duplicate stage name {show(name)} (first on line {names[name]})"
        else:
            names[name] = line


def validate(definition: Definition, filename: str = "<string>") -> list[DefFileError]:
    """Semantic problems of *definition*, in line order; [] when it is fine to build."""
    found = [DefFileError(filename, line, message) for line, message in _problems(definition)]
    return sorted(found, key=lambda problem: problem.line)


def check(text: str, filename: str = "<string>") -> list[DefFileError]:
    """Every problem in *text*, syntax and semantic, in line order; [] when it parses."""
    # Imported here: the parser itself depends on validate() above.
    from hpcstack.deffile.parser import diagnose

    return diagnose(text, filename)[1]
