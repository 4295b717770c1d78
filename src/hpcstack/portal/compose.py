"""The page's "base + packages + %post" form, written as a definition (pure, no I/O).

Package names are checked against what Debian and pip accept as names (with an
optional version), so nothing with a shell metacharacter ever gets in; those that
pass are still quoted (``shlex.quote``) where they go into ``%post``.  The text is
made by :func:`hpcstack.deffile.render` and checked by :func:`hpcstack.deffile.check`,
the same checker as ``hpcstack def check`` and the service.
"""

from __future__ import annotations

import re
import shlex

from pydantic import BaseModel, Field

from hpcstack.deffile import Definition, Script, Stage, check, render
from hpcstack.service.models import base_problem

# Debian policy 5.6.1: lower case, digits, + - . ; at least two characters; then an optional
# =VERSION (epoch, upstream, revision characters) or :ARCH.
DEB_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?")
# PEP 508 names (letters, digits, . _ -), optional extras and an exact ==VERSION: no
# < > ! * (each means something to the shell), so no ranges; pin a version or leave it.
PIP_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?(\[[A-Za-z0-9._,-]+\])?"
                    r"(==[A-Za-z0-9.+-]+)?")
FILENAME = "build.def"


class ComposeForm(BaseModel):
    """What the page's form sends: a base and packages, each list as typed."""

    base: str = Field(description="docker://REF, debootstrap://SUITE or one of your containers")
    debs: str = Field("", description="Debian packages, separated by spaces or commas")
    pips: str = Field("", description="pip packages, separated by spaces or commas")
    post: str = Field("", description="more %post commands, run after the installs")


class Problem(BaseModel):
    """One problem: a form field (``debs``) or a definition line (``line``), and why."""

    field: str
    message: str
    line: int | None = None


class Composed(BaseModel):
    text: str
    problems: list[Problem]


def split_names(raw: str) -> list[str]:
    return [n for n in re.split(r"[\s,]+", raw.strip()) if n]


def name_problems(field: str, names: list[str], pattern: re.Pattern[str],
                  what: str) -> list[Problem]:
    """A problem for each name that is not a plain package name (refused, not escaped)."""
    version = "=VERSION" if what == "Debian" else "==VERSION"
    return [Problem(field=field, message=f"{field}: {name!r} is not a {what} package name "
                    f"(letters, digits and . + - only, then an optional {version})")
            for name in names if not pattern.fullmatch(name)]


def bootstrap(base: str) -> tuple[tuple[str, str], ...]:
    """The header for a base as the page names it (a docker reference, a suite, a container)."""
    if base.startswith("docker://"):
        return (("Bootstrap", "docker"), ("From", base.removeprefix("docker://")))
    if base.startswith("debootstrap://"):
        return (("Bootstrap", "debootstrap"), ("OSVersion", base.removeprefix("debootstrap://")),
                ("MirrorURL", "http://deb.debian.org/debian"))
    return (("Bootstrap", "localimage"), ("From", base))


def post_script(debs: list[str], pips: list[str], extra: str) -> str:
    """``%post``: apt-get, then pip, then the user's own lines; every name quoted."""
    lines = []
    if pips and "python3-pip" not in debs:
        debs = [*debs, "python3-pip", "python3-venv"]
    if debs:
        lines += ["export DEBIAN_FRONTEND=noninteractive", "apt-get update",
                  "apt-get install -y --no-install-recommends "
                  + " ".join(shlex.quote(d) for d in debs),
                  "rm -rf /var/lib/apt/lists/*"]
    if pips:
        lines.append("python3 -m pip install --no-cache-dir --break-system-packages "
                     + " ".join(shlex.quote(p) for p in pips))
    if extra.strip():
        lines.append(extra.strip("\n"))
    return "\n".join(lines)


def compose(form: ComposeForm) -> Composed:
    """The definition the form describes, and every problem with it (form and checker)."""
    debs, pips = split_names(form.debs), split_names(form.pips)
    problems = name_problems("debs", debs, DEB_RE, "Debian")
    problems += name_problems("pips", pips, PIP_RE, "pip")
    base = form.base.strip()
    if not base:
        problems.append(Problem(field="base", message="base: pick an image to start from"))
    elif problem := base_problem(base):
        problems.append(Problem(field="base", message=problem))
    if problems:
        return Composed(text="", problems=problems)
    body = post_script(debs, pips, form.post)
    stage = Stage(header=bootstrap(base), post=Script(body=body) if body else None)
    try:
        text = render(Definition(stages=(stage,)))
    except ValueError as err:  # a %post line the syntax cannot hold (one starting with %)
        return Composed(text="", problems=[Problem(field="post", message=f"post: {err}")])
    return Composed(text=text, problems=checked(text))


def checked(text: str, filename: str = FILENAME) -> list[Problem]:
    """The checker's problems, each at its line (``FILE:LINE: message`` as the CLI says)."""
    return [Problem(field="definition", line=e.line, message=str(e))
            for e in check(text, filename)]
