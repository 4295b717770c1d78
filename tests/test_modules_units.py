"""The pure core of container modules: site model, discovery, rendering, quoting.

Rendered Lua and Tcl are also read back by the real interpreters (``lua``/
``texlua`` from Lmod's dependencies, ``tclsh``) when they are installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcstack.errors import UserError
from hpcstack.modules import parse_site
from hpcstack.modules.config import App, Site
from hpcstack.modules.render import (
    ImageFacts,
    Layout,
    discover,
    lua_default,
    lua_modulefile,
    lua_quote,
    module_for,
    shadowed,
    tcl_default,
    tcl_modulefile,
    tcl_quote,
    wrapper,
)

SITE = """\
root: /srv/modules
binds: [/lustre]
apps:
  - name: gromacs
    version: 2022-cpu
    image: /images/gromacs.sif
    mpi: openmpi
    state: default
"""
FACTS = ImageFacts(
    source="/images/gromacs.sif",
    sha256="ab" * 32,
    labels={"hpcstack.commands": "gmx gmx_mpi", "Description": "GROMACS {2022} $x [y]"},
    help='Run "gmx_mpi".\nBraces { and } and $HOME stay literal.',
    executables=("/usr/bin/gmx", "/usr/bin/gmx_mpi", "/usr/bin/ls", "/opt/a/bin/tool",
                 "/opt/a/bin/sub/deeper", "/usr/local/bin/helper"),
)


def site(text: str = SITE) -> Site:
    return parse_site(text, "site.yaml")


# --- the site file ----------------------------------------------------------------------


def test_defaults() -> None:
    s = site()
    app = s.apps[0]
    assert (s.runtime, s.module_system, app.commands, app.gpu) == (
        "charliecloud", "both", "discover", None)


@pytest.mark.parametrize(("body", "field"), [
    ("apps:\n  - {name: a, version: '1', image: x, gpu: cuda}", "apps[0].gpu"),
    ("apps:\n  - {name: a, version: '1'}", "apps[0].image"),
    ("apps:\n  - {name: a, version: '1', image: x, colour: red}", "apps[0].colour"),
    ("apps:\n  - {name: a, version: '1', image: x, state: on}", "apps[0].state"),
    ("apps:\n  - {name: 'a b', version: '1', image: x}", "apps[0].name"),
    ("apps:\n  - {name: a, version: '1', image: x, commands: []}", "apps[0].commands"),
    ("apps:\n  - {name: a, version: '1', image: x, binds: [lustre]}", "apps[0].binds"),
    ("apps:\n  - {name: a, version: '1', image: x, env: {1X: y}}", "apps[0].env"),
    ("runtime: docker", "runtime"),
    ("module_system: spack", "module_system"),
    ("launchers: [pmi2, openmpi]", "launchers[1]"),
    ("launchers: [pmix, pmix]", "launchers"),
    ("launchers: pmix", "launchers"),
    ("apps:\n  - {name: a, version: '1', image: x, mpi_hello: bin/hello}", "apps[0].mpi_hello"),
])
def test_schema_errors_name_the_field(body: str, field: str) -> None:
    with pytest.raises(UserError) as err:
        site(body)
    assert str(err.value).startswith(f"site.yaml: {field}: ")
    assert "\n" not in str(err.value)


def test_launchers() -> None:
    assert site().launchers == []
    assert site("launchers: [pmi2, pmix, mpirun]").launchers == ["pmi2", "pmix", "mpirun"]
    with pytest.raises(UserError) as err:
        site("launchers: [pmi2, openmpi]")
    assert str(err.value) == ("site.yaml: launchers[1]: Input should be 'pmi2', 'pmix' or "
                              "'mpirun'")


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(UserError, match=r"^site.yaml:\d+: expected"):
        site("apps:\n  - [unclosed\n")


def test_two_apps_one_module() -> None:
    body = "apps:\n  - {name: a, version: '1', image: x}\n  - {name: a, version: '1', image: y}"
    with pytest.raises(UserError, match=r"apps\[1\]: module a/1 is already claimed by apps\[0\]"):
        site(body)


def test_two_defaults_for_one_name() -> None:
    body = ("apps:\n  - {name: a, version: '1', image: x, state: default}\n"
            "  - {name: a, version: '2', image: y, state: default}")
    with pytest.raises(UserError, match=r"apps\[1\].state: a already has a default"):
        site(body)


# --- discovery and shadowing ------------------------------------------------------------


def _app(**kw: object) -> App:
    return App(name="x", version="1", image="/i.sif", **kw)  # type: ignore[arg-type]


def test_discover_listed_label_and_globs() -> None:
    s = site()
    assert discover(_app(commands=["a"]), s, FACTS) == ["a"]
    assert discover(_app(), s, FACTS) == ["gmx", "gmx_mpi"]  # the label wins
    unlabelled = ImageFacts(**{**FACTS.__dict__, "labels": {}})
    assert discover(_app(), s, unlabelled) == ["helper", "tool"]  # one level deep only
    assert discover(_app(discover=["/usr/bin/gmx*"]), s, FACTS) == ["gmx", "gmx_mpi"]


def test_shadowing() -> None:
    assert shadowed(["gmx", "ls", "python3", "mine"], site(), {"mine"}) == ["ls", "python3",
                                                                           "mine"]


# --- rendering --------------------------------------------------------------------------


def _module():  # type: ignore[no-untyped-def]
    s = site()
    return s, s.apps[0], module_for(s.apps[0], s, FACTS, ["gmx", "gmx_mpi"])


def test_wrapper_execs_the_runtime_with_quoted_args() -> None:
    s, app, m = _module()
    text = wrapper(m, app, s, "gmx_mpi", "/usr/bin/ch-run")
    assert text.startswith("#!/bin/sh\n")
    last = text.strip().splitlines()[-1]
    assert last.startswith("exec /usr/bin/ch-run ") and last.endswith(' gmx_mpi "$@"')
    assert "-b /home -b /lustre" in last
    assert "OMPI_MCA_btl_vader_single_copy_mechanism=none" in last
    assert f"{m.image} -- /.singularity.d/actions/exec" in last
    assert "python" not in text and "hpcstack " not in last
    assert "'--unset-env=APPTAINER_*'" in last  # globs quoted for the shell


def test_wrapper_apptainer_command_line() -> None:
    s = site(SITE.replace("root:", "runtime: apptainer\nroot:").replace(
        "mpi: openmpi", "mpi: openmpi\n    gpu: nvidia"))
    m = module_for(s.apps[0], s, FACTS, ["gmx_mpi"])
    last = wrapper(m, s.apps[0], s, "gmx_mpi", "/usr/bin/apptainer").strip().splitlines()[-1]
    assert last == (f"exec /usr/bin/apptainer exec --nv -B /lustre --env "
                    f"OMPI_MCA_btl_vader_single_copy_mechanism=none {m.image} gmx_mpi \"$@\"")
    assert m.image.endswith(".sif")


def test_modulefiles_contents() -> None:
    _, _, m = _module()
    lua = lua_modulefile(m)
    assert 'prepend_path("PATH", "/srv/modules/bin/gromacs/2022-cpu")' in lua
    assert "isDir(image)" in lua and "LmodError" in lua
    assert "capture(" not in lua and "execute" not in lua  # no subprocess at load time
    tcl = tcl_modulefile(m)
    assert "prepend-path PATH \"/srv/modules/bin/gromacs/2022-cpu\"" in tcl
    assert "conflict \"gromacs\"" in tcl
    assert 'module_version("gromacs/2022-cpu", "default")' in lua_default("gromacs", "2022-cpu")
    assert 'set ModulesVersion "2022-cpu"' in tcl_default("gromacs", "2022-cpu")


def _interp(*names: str) -> str | None:
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FF),
               max_size=40))
def test_lua_and_tcl_quoting_round_trip(text: str) -> None:
    lua = _interp("lua5.3", "lua5.4", "lua", "lua5.1")
    tcl = _interp("tclsh")
    if lua is None and tcl is None:
        pytest.skip("needs lua or tclsh")
    if lua:
        out = subprocess.run([lua, "-e", f"io.write({lua_quote(text)})"], capture_output=True,
                             check=True).stdout
        assert out == text.encode()
    if tcl:
        script = f"fconfigure stdout -translation binary -encoding utf-8\n" \
                 f"puts -nonewline {tcl_quote(text)}\n"
        out = subprocess.run([tcl], input=script.encode(), capture_output=True,
                             check=True).stdout
        assert out == text.encode()


# --- modules check --mpi: the job script and the verdict --------------------------------


def test_mpi_check_job_script() -> None:
    from hpcstack.modules.mpicheck import job_script

    text = job_script(module="gromacs/2022-cpu", modulepath="/opt/m/lmod", launcher="pmi2",
                      hello="hpcstack-mpi-hello", output="/w/out", partition="debug",
                      timeout=90, lmod_init="/usr/share/lmod/lmod/init/bash")
    assert text.splitlines()[0] == "#!/bin/bash"
    for line in ("#SBATCH -n 2", "#SBATCH --ntasks-per-node=2", "#SBATCH --time=2",
                 "#SBATCH --output=/w/out", "#SBATCH --partition=debug",
                 "source /usr/share/lmod/lmod/init/bash", "export MODULEPATH=/opt/m/lmod",
                 "module load gromacs/2022-cpu || exit 97",
                 "srun --mpi=pmi2 -n 2 hpcstack-mpi-hello"):
        assert line in text.splitlines(), line
    tcl = job_script(module="a/1", modulepath="/m/tcl", launcher="mpirun", hello="h",
                     output="o", modulecmd=["tclsh", "/x/modulecmd.tcl"])
    assert 'module() { eval "$(tclsh /x/modulecmd.tcl bash "$@")"; }' in tcl
    assert "mpirun -np 2 h" in tcl.splitlines() and "--partition" not in tcl
    with pytest.raises(UserError):
        job_script(module="a/1", modulepath="/m", launcher="pmix", hello="h", output="o")


@pytest.mark.parametrize(("output", "ok", "works", "detail"), [
    ("hello from rank 1 of 2 (rank sum 1)\nhello from rank 0 of 2 (rank sum 1)\n", True,
     True, "2 ranks"),
    ("hello from rank 0 of 1 (rank sum 0)\nhello from rank 0 of 1 (rank sum 0)\n", True,
     False, "2 singletons: each rank saw a world of 1"),
    ("hpcstack-mpi-check: start\n[vm:1] OPAL ERROR: Unreachable in file ext3x_client.c\n"
     "-----\nThe application appears to have been direct launched\n", False, False,
     "[vm:1] OPAL ERROR: Unreachable in file ext3x_client.c"),
    ("hello from rank 0 of 2 (rank sum 1)\n", False, False, "ranks answered: 0 of 2"),
    # Debian 12's Open MPI 4.1 ranks under a Debian 13 host's mpirun (Open MPI 5).
    ("It looks like orte_init failed for some reason; your parallel process is\n"
     "  orte_ess_init failed\n  --> Returned value Error (-1) instead of ORTE_SUCCESS\n",
     False, False, "the image's Open MPI 4 (ORTE) cannot be started by this host's mpirun "
     "(Open MPI 5, PRRTE): use srun --mpi=pmix"),
    ("", False, False, "job FAILED without output"),
])
def test_mpi_check_verdict(output: str, ok: bool, works: bool, detail: str) -> None:
    from hpcstack.modules.mpicheck import verdict

    got = verdict(output, 2, ok, "FAILED")
    assert got[0] is works and got[1].startswith(detail), got


def test_mpich_apps_get_ucx_named_shared_memory() -> None:
    from hpcstack.modules.render import container_env

    s = site()
    assert container_env(_app(mpi="mpich"), s)["UCX_POSIX_USE_PROC_LINK"] == "n"
    assert "UCX_POSIX_USE_PROC_LINK" not in container_env(_app(mpi="openmpi"), s)


def test_a_users_site_takes_the_centers_runtime_settings(tmp_path: Path) -> None:
    from hpcstack.modules import personal

    center = parse_site("root: /opt/site\nruntime: apptainer\nbinds: [/lustre]\n"
                        "env: {SITE: x}\nmodule_system: lmod\n")
    site = personal.user_site(center, home=tmp_path)
    assert (site.runtime, site.binds, site.env, site.module_system) == (
        "apptainer", ["/lustre"], {"SITE": "x"}, "lmod")
    assert site.root == str(tmp_path / "user") and site.apps == []
    layout = Layout.of(site)
    assert layout.lmod == layout.tcl == str(tmp_path / "modules")
    assert personal.user_site(None, home=tmp_path).runtime == "charliecloud"
    assert personal.data_home({"XDG_DATA_HOME": "/x"}) == Path("/x/hpcstack")
    assert personal.data_home({"HOME": "/h"}) == Path("/h/.local/share/hpcstack")
    assert personal.data_home({"HOME": "/h", "XDG_DATA_HOME": "rel"}) == \
        Path("/h/.local/share/hpcstack")  # XDG: a relative path is ignored


def test_a_users_apps_file_with_a_bad_entry_is_one_line(tmp_path: Path) -> None:
    from hpcstack.modules import personal

    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "modules.yaml").write_text("apps:\n  - {name: x, version: latest}\n")
    with pytest.raises(UserError, match=r"modules.yaml: apps\[0\].image"):
        personal.user_site(None, home=tmp_path)
