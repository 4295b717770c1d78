"""Runtime adapters: Apptainer/Singularity by command line, Charliecloud for real.

The Apptainer and SingularityCE adapters are tested here by the exact command
lines they produce, checked against Apptainer's documented CLI; the real
Apptainer (Debian sid's 1.4) runs them in tests/test_apptainer.py (``hpcstack
run|exec --runtime apptainer``), tests/test_modules.py (``runtime: apptainer``
under Slurm) and tests/test_bench_cli.py.  SingularityCE is not installable here.

Charliecloud runs here: the integration tests build a small Debian image with
Apptainer's ``/.singularity.d`` layout as an ordinary user (mmdebstrap, a user
namespace, mksquashfs, siftool) and run it through ``hpcstack.runtime`` as that
user, the way a module wrapper would.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import HPCSTACK_PREFIX, REPO, User, need
from hpcstack.errors import UserError
from hpcstack.runtime import Bind, Launch, read_sif, select
from hpcstack.runtime.apptainer import env_flag
from hpcstack.runtime.cache import cache_dir
from hpcstack.runtime.charliecloud import DEFAULT_PATH, UNSET

HELPER = Path(__file__).resolve().parent / "runtime_helper.py"
PYTHON = str(HPCSTACK_PREFIX / "bin" / "python")
PRIMARY_PARTITION = "--datatype 4 --parttype 2 --partfs 1 --partarch 2"


# --- the runtime-neutral request ---------------------------------------------------------------


def test_select_knows_three_runtimes() -> None:
    assert [select(n).name for n in ("apptainer", "singularity", "charliecloud")] == [
        "apptainer",
        "singularity",
        "charliecloud",
    ]
    with pytest.raises(
        UserError,
        match=r"runtime .docker.: unknown \(known: apptainer, singularity, charliecloud\)",
    ):
        select("docker")


@pytest.mark.parametrize(
    ("spec", "bind"),
    [
        ("/data", Bind("/data", "/data")),
        ("/a:/b", Bind("/a", "/b")),
        ("/a:/b:ro", Bind("/a", "/b", ro=True)),
        ("rel:/b:rw", Bind("rel", "/b")),
    ],
)
def test_bind_syntax(spec: str, bind: Bind) -> None:
    assert Bind.parse(spec) == bind
    assert Bind.parse(bind.spec()) == bind


@pytest.mark.parametrize("spec", ["", ":/b", "/a:", "/a:/b:rx", "/a:/b:ro:x", "/a:rel"])
def test_bad_bind_is_a_user_error(spec: str) -> None:
    with pytest.raises(UserError, match="bind"):
        Launch("run", Path("x.sif"), binds=[spec])


def test_launch_validation() -> None:
    with pytest.raises(UserError, match="action 'start': expected one of exec, run, shell, test"):
        Launch("start", Path("x.sif"))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="exec: a command to run is required"):
        Launch("exec", Path("x.sif"))
    with pytest.raises(UserError, match="gpu 'intel'"):
        Launch("run", Path("x.sif"), gpu="intel")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="env 'A-B'"):
        Launch("run", Path("x.sif"), env={"A-B": "1"})


# --- Apptainer / Singularity: command lines only -----------------------------------------------


def test_apptainer_exec_command_line() -> None:
    """Command line: the documented exec syntax (run for real in test_apptainer.py)."""
    launch = Launch(
        "exec",
        Path("/img/gromacs.sif"),
        ["gmx_mpi", "mdrun", "-v"],
        binds=["/scratch", "/data:/mnt/data:ro"],
        gpu="nvidia",
        env={"OMP_NUM_THREADS": "4"},
    )
    assert select("apptainer").argv(launch) == [
        "apptainer",
        "exec",
        "--nv",
        "-B",
        "/scratch",
        "-B",
        "/data:/mnt/data:ro",
        "--env",
        "OMP_NUM_THREADS=4",
        "/img/gromacs.sif",
        "gmx_mpi",
        "mdrun",
        "-v",
    ]


@pytest.mark.parametrize(
    ("action", "args", "expected"),
    [
        ("run", ["a", "b c"], ["run", "/i.sif", "a", "b c"]),
        ("shell", [], ["shell", "/i.sif"]),
        ("test", [], ["test", "/i.sif"]),
    ],
)
def test_apptainer_other_actions(action: str, args: list[str], expected: list[str]) -> None:
    """Command line: run, shell and test (run for real in test_apptainer.py)."""
    assert select("apptainer").argv(Launch(action, Path("/i.sif"), args)) == [
        "apptainer",
        *expected,
    ]


def test_singularity_is_apptainer_with_its_own_name() -> None:
    """Command line only (SingularityCE is not installable here); AMD GPUs are ``--rocm``."""
    launch = Launch("exec", Path("i.sif"), ["id"], binds=["/a:/b"], gpu="amd", env={"X": "1"})
    assert select("singularity").argv(launch) == [
        "singularity",
        "exec",
        "--rocm",
        "-B",
        "/a:/b",
        "--env",
        "X=1",
        "i.sif",
        "id",
    ]


def test_apptainer_env_that_flags_cannot_carry() -> None:
    """Command line only: a value pflag would mangle travels as APPTAINERENV_/SINGULARITYENV_."""
    launch = Launch("run", Path("i.sif"), env={"Q": 'say "hi"', "R": "a\rb"})
    for name, prefix in (("apptainer", "APPTAINERENV_"), ("singularity", "SINGULARITYENV_")):
        plan = select(name, environ={"PATH": "/usr/bin"}).plan(launch)
        assert plan.argv == [name, "run", "i.sif"]
        assert plan.env == {"PATH": "/usr/bin", f"{prefix}Q": 'say "hi"', f"{prefix}R": "a\rb"}


def test_apptainer_refuses_what_it_cannot_bind() -> None:
    with pytest.raises(UserError, match="cannot bind a path containing ','"):
        select("apptainer").argv(Launch("run", Path("i.sif"), binds=["/a,b:/c"]))
    assert select("apptainer").argv(Launch("run", Path("-x.sif")))[-1] == "./-x.sif"


def pflag_string_to_string(val: str) -> dict[str, str]:
    """What spf13/pflag's stringToString (Apptainer's ``--env``) makes of one argument."""
    if val.count("=") == 1:
        items = [val.strip('"')]
    else:
        items = next(csv.reader(io.StringIO(val, newline="")))
    return dict(item.split("=", 1) for item in items)


@given(
    key=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    value=st.text(st.characters(blacklist_characters="\x00\r"), max_size=20)
    | st.sampled_from(['"', 'a"', "a=b,c", 'x="1,2"', "-Wl,-rpath=/x", "\n"]),
)
def test_env_flag_round_trips_through_pflag(key: str, value: str) -> None:
    flag = env_flag(key, value)
    if flag is not None:
        assert pflag_string_to_string(flag) == {key: value}
    else:
        assert value.endswith('"')


# --- Charliecloud: planning, no ch-run needed ----------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    """A host home, a data directory and a sandbox image laid out like Apptainer's."""
    home = tmp_path / "home" / "alice"
    (home / "proj").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    sandbox = tmp_path / "sandbox"
    for d in ("home", "tmp", "var/tmp", "etc", "bin", ".singularity.d/actions", "mnt/empty"):
        (sandbox / d).mkdir(parents=True)
    for action in ("exec", "run"):
        (sandbox / ".singularity.d/actions" / action).write_text("#!/bin/sh\n")
    plain = tmp_path / "plain"
    (plain / "etc").mkdir(parents=True)
    return {"home": home, "data": data, "sandbox": sandbox, "plain": plain, "tmp": tmp_path}


def charliecloud(host: dict[str, Path], **env: str):
    environ = {
        "HOME": str(host["home"]),
        "USER": "alice",
        "PATH": "/usr/bin:/bin",
        "XDG_CACHE_HOME": str(host["tmp"] / "cache"),
        **env,
    }
    return select("charliecloud", environ=environ)


def test_charliecloud_exec_plan(host: dict[str, Path]) -> None:
    """Home under /tmp is already visible; a working directory the sandbox lacks falls back."""
    launch = Launch(
        "exec", host["sandbox"], ["make", "-j2"], cwd=Path("/usr/share"), env={"A": "'q'"}
    )
    plan = charliecloud(host, APPTAINERENV_B="2", TMPDIR="/nowhere").plan(launch)
    sandbox, home = str(host["sandbox"]), str(host["home"])
    env = [
        f"--set-env=PATH={DEFAULT_PATH}",
        f"--set-env=HOME={home}",
        f"--set-env=APPTAINER_CONTAINER={sandbox}",
        "--set-env=APPTAINER_NAME=sandbox",
        f"--set-env=SINGULARITY_CONTAINER={sandbox}",
        "--set-env=SINGULARITY_NAME=sandbox",
        "--set-env=B=2",
        "--set-env=A=''q''",
    ]
    assert plan.argv == [
        "ch-run",
        "-b",
        "/var/tmp",
        "-c",
        home,
        "--env-no-expand",
        *(f"--unset-env={g}" for g in UNSET),
        *env,
        sandbox,
        "--",
        "/.singularity.d/actions/exec",
        "/usr/bin/env",
        "--",
        "B=2",
        "A='q'",
        "make",
        "-j2",
    ]
    assert plan.env["USER"] == "alice" and "TMPDIR" not in plan.env
    assert plan.mountpoints == []
    assert plan.notes == [
        f"charliecloud: working directory /usr/share is not visible in the"
        f" container; starting in {home}"
    ]
    visible_tmp = charliecloud(host, TMPDIR=home).argv(launch)
    assert f"--set-env=TMPDIR={home}" in visible_tmp


def test_charliecloud_home_at_its_own_path(host: dict[str, Path], user: User) -> None:
    """Home is /home/$USER but the unowned sandbox lacks it: ch-run --home puts it there."""
    if user.home != Path("/home", user.name):
        pytest.skip(f"{user.name}'s home is not /home/{user.name}")
    rt = select("charliecloud", environ={"HOME": str(user.home), "USER": user.name})
    plan = rt.plan(Launch("run", host["sandbox"], cwd=user.home))
    assert plan.argv[:4] == ["ch-run", "--home", "-b", "/var/tmp"]
    assert plan.argv[plan.argv.index("-c") + 1] == str(user.home)
    assert plan.notes == []


def test_charliecloud_binds(host: dict[str, Path]) -> None:
    launch = Launch(
        "run",
        host["sandbox"],
        ["x"],
        binds=[f"{host['data']}:/mnt/empty:ro"],
        cwd=host["home"] / "proj",
    )
    plan = charliecloud(host).plan(launch)
    at = plan.argv.index(f"{host['data']}:/mnt/empty")
    assert plan.argv[at - 1] == "-b"
    assert any("cannot bind read-only" in n for n in plan.notes)
    assert plan.argv[-4:] == [str(host["sandbox"]), "--", "/.singularity.d/actions/run", "x"]


def test_charliecloud_bind_errors(host: dict[str, Path]) -> None:
    rt = charliecloud(host)
    with pytest.raises(UserError, match="bind '/no/such:/mnt': /no/such does not exist"):
        rt.plan(Launch("run", host["sandbox"], binds=["/no/such:/mnt"], cwd=host["home"]))
    with pytest.raises(UserError, match=r"/opt/x does not exist in .* cannot create it there"):
        rt.plan(Launch("run", host["sandbox"], binds=[f"{host['data']}:/opt/x"], cwd=host["home"]))


@pytest.mark.parametrize(
    ("action", "inner"),
    [
        ("exec", ["true"]),
        ("run", ["/bin/sh"]),
        ("shell", ["/bin/sh", "-c", 'SHELL="$0"; export SHELL; exec "$0" "$@"', "/bin/sh"]),
        ("test", ["/bin/sh", "-c", "true"]),
    ],
)
def test_charliecloud_without_action_scripts(
    host: dict[str, Path], action: str, inner: list[str]
) -> None:
    """A plain directory: what Apptainer's action scripts would have started, directly."""
    args = ["true"] if action == "exec" else []
    plan = charliecloud(host).plan(Launch(action, host["plain"], args, cwd=host["home"]))
    assert plan.argv[plan.argv.index("--") + 1 :] == inner


def test_charliecloud_shell_fallback_exports_shell() -> None:
    """Issue 12 point 8: the fallback command itself, run by the real /bin/sh."""
    from hpcstack.runtime.charliecloud import SHELL_EXPORT

    proc = subprocess.run([*SHELL_EXPORT, "/bin/sh", "-c", 'echo "$SHELL"'],
                          capture_output=True, text=True, check=True)
    assert proc.stdout == "/bin/sh\n"


def test_charliecloud_gpu_is_a_warning(host: dict[str, Path]) -> None:
    plan = charliecloud(host).plan(Launch("run", host["plain"], gpu="nvidia", cwd=host["home"]))
    assert any("ch-fromhost --nvidia" in n for n in plan.notes)


def test_charliecloud_argv_for_a_sif_changes_nothing(host: dict[str, Path], tmp_path: Path) -> None:
    """argv is pure: it names the cache directory but neither extracts nor creates it."""
    need("siftool", "mksquashfs")
    (tmp_path / "t" / "etc").mkdir(parents=True)
    subprocess.run(
        ["mksquashfs", tmp_path / "t", tmp_path / "t.sqfs", "-quiet", "-no-progress"], check=True
    )
    sif = tmp_path / "t.sif"
    subprocess.run(["siftool", "new", sif], check=True)
    subprocess.run(
        ["siftool", "add", sif, tmp_path / "t.sqfs", *PRIMARY_PARTITION.split()], check=True
    )
    rt = charliecloud(host)
    argv = rt.argv(Launch("exec", sif, ["id"], cwd=host["home"]))
    root = Path(argv[argv.index("--") - 1])
    assert root.parent == cache_dir(rt.environ)
    assert root.name.endswith(f"-{sif.stat().st_mtime_ns}")
    assert not (host["tmp"] / "cache").exists()


# --- Charliecloud: real containers, as an ordinary user -------------------------------------

ACTION_HEAD = """#!/bin/sh
for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then . "$script"; fi
done
"""
IMAGE_FILES = {
    "actions/exec": ACTION_HEAD + 'exec "$@"\n',
    "actions/run": ACTION_HEAD + 'exec /.singularity.d/runscript "$@"\n',
    "actions/shell": ACTION_HEAD + 'exec /bin/bash --norc "$@"\n',
    "actions/test": ACTION_HEAD + 'exec /.singularity.d/test "$@"\n',
    "env/90-environment.sh": "#!/bin/sh\nexport HPCSTACK_IMAGE_VAR=from-image\n"
    "export HPCSTACK_SHARED=from-image\n",
    "runscript": '#!/bin/sh\necho "runscript got $# args: $1|$2 shared=$HPCSTACK_SHARED"\n',
    "test": "#!/bin/sh\necho test-ok\n",
}
INSIDE = """set -eu
mkdir rootfs
tar -xf root.tar -C rootfs --exclude='./dev/*'
cp -r meta rootfs/.singularity.d
chmod -R 755 rootfs/.singularity.d
mksquashfs rootfs image.sqfs -quiet -noappend -no-progress
rm -rf rootfs
"""


@dataclass(frozen=True)
class Image:
    """The session's test image: a SIF, the same SquashFS bare, and a plain sandbox."""

    work: Path

    @property
    def sif(self) -> Path:
        return self.work / "image.sif"

    @property
    def sqfs(self) -> Path:
        return self.work / "image.sqfs"

    @property
    def plain(self) -> Path:
        return self.work / "plain"


@pytest.fixture(scope="session")
def image(user: User) -> Iterator[Image]:
    """Built as the user: mmdebstrap, unpack in a user namespace, Apptainer layout, siftool."""
    need("mmdebstrap", "unshare", "mksquashfs", "unsquashfs", "siftool", "ch-run")
    work = user.workdir("runtime-image")
    for name, text in IMAGE_FILES.items():
        (work / "meta" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "meta" / name).write_text(text)
    (work / "inside.sh").write_text(INSIDE)
    (work / "image.def").write_text("Bootstrap: debootstrap\nOSVersion: bookworm\n")
    (work / "labels.json").write_text('{"org.hpcstack.test": "yes"}')
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", work], check=True)
    steps = [
        "env TMPDIR=/tmp mmdebstrap --quiet --mode=unshare --variant=minbase --format=tar bookworm "
        "root.tar",  # its temporary root outside the private (0700) home
        "unshare --map-root-user --map-auto sh inside.sh",
        "rm root.tar",
        "siftool new image.sif",
        "siftool add image.sif image.def --datatype 1",
        "siftool add image.sif labels.json --datatype 6 --filename labels.json",
        f"siftool add image.sif image.sqfs {PRIMARY_PARTITION}",
        "unsquashfs -n -q -no-xattrs -d plain image.sqfs",
        "rm -rf plain/.singularity.d",
    ]
    for step in steps:
        user.run(step.split(), cwd=work, check=True, timeout=600)
    yield Image(work)
    remove(user, work)


@pytest.fixture(scope="session")
def shared_cache(user: User, image: Image) -> Iterator[Path]:
    """One extracted copy for the tests that do not study the cache itself."""
    cache = user.workdir("runtime-cache")
    yield cache
    remove(user, cache)


def remove(user: User, path: Path) -> None:
    """Delete as the user; extracted images may hold read-only directories."""
    user.run(["sh", "-c", 'chmod -R u+w "$1" && rm -rf "$1"', "sh", str(path)])


@pytest.fixture
def scratch(user: User) -> Iterator[Callable[[str], Path]]:
    """Fresh directories owned by the user, deleted after the test."""
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(user.workdir(f"runtime-{name}-{uuid.uuid4().hex[:8]}"))
        return made[-1]

    yield make
    for path in made:
        remove(user, path)


def hpc(
    user: User,
    spec: dict,
    *,
    cache: Path,
    cwd: Path | None = None,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Launch through the library as the user, like the CLI (tests/runtime_helper.py)."""
    spec = {"action": "exec", **spec}
    spec["image"] = str(spec["image"])
    argv = [PYTHON, str(HELPER), "charliecloud", json.dumps(spec), *extra]
    return user.run(argv, cwd=cwd, env={"XDG_CACHE_HOME": str(cache), **(env or {})}, timeout=300)


def extracted(cache: Path) -> list[Path]:
    return sorted(
        p for p in (cache / "hpcstack" / "images").iterdir() if not p.name.startswith(".")
    )


@pytest.mark.integration
def test_exec_output_and_exit_status(user: User, image: Image, shared_cache: Path) -> None:
    proc = hpc(
        user,
        {"image": image.sif, "args": ["sh", "-c", "echo out; echo err >&2; exit 7"]},
        cache=shared_cache,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")


@pytest.mark.integration
def test_environment(user: User, image: Image, shared_cache: Path) -> None:
    """Image env scripts run; --env and APPTAINERENV_ beat them for exec, as in Apptainer."""
    show = 'echo "$HPCSTACK_IMAGE_VAR $HPCSTACK_SHARED $FROM_HOST ${LD_LIBRARY_PATH:-none} $PATH"'
    proc = hpc(
        user,
        {"image": image.sif, "args": ["sh", "-c", show], "env": {"HPCSTACK_SHARED": "from-launch"}},
        cache=shared_cache,
        env={"APPTAINERENV_FROM_HOST": "yes", "LD_LIBRARY_PATH": "/x"},
    )
    assert proc.stdout == f"from-image from-launch yes none {DEFAULT_PATH}\n", proc.stderr


@pytest.mark.integration
def test_run_calls_the_runscript_with_args(user: User, image: Image, shared_cache: Path) -> None:
    """Documented difference: for run, the image's own %environment value wins over --env."""
    proc = hpc(
        user,
        {
            "action": "run",
            "image": image.sif,
            "args": ["a", "b c"],
            "env": {"HPCSTACK_SHARED": "from-launch"},
        },
        cache=shared_cache,
    )
    assert proc.stdout == "runscript got 2 args: a|b c shared=from-image\n", proc.stderr
    assert proc.returncode == 0


@pytest.mark.integration
def test_shell_and_test_actions(user: User, image: Image, shared_cache: Path) -> None:
    shell = hpc(
        user,
        {"action": "shell", "image": image.sif, "args": ["-c", "echo shell=$SHELL_OK $0"]},
        cache=shared_cache,
        env={"SHELL_OK": "1"},
    )
    assert shell.stdout == "shell=1 /bin/bash\n", shell.stderr
    test = hpc(user, {"action": "test", "image": image.sif}, cache=shared_cache)
    assert (test.returncode, test.stdout) == (0, "test-ok\n")


@pytest.mark.integration
def test_cwd_and_relative_paths_into_home(
    user: User, image: Image, shared_cache: Path, scratch: Callable[[str], Path]
) -> None:
    work = scratch("cwd")
    user.run(
        ["sh", "-c", f"echo in-cwd > {work}/data.txt; echo in-home > ~/runtime-note.txt"],
        check=True,
    )
    proc = hpc(
        user,
        {"image": image.sif,
         "args": ["sh", "-c", "pwd; echo $HOME; cat data.txt ../../runtime-note.txt"]},
        cache=shared_cache,
        cwd=work,
    )
    # HOME is the user's own home inside too (ch-run 0.38 would say /root).
    assert proc.stdout == f"{work}\n{user.home}\nin-cwd\nin-home\n", proc.stderr
    user.run(["rm", "-f", str(user.home / "runtime-note.txt")])


@pytest.mark.integration
def test_working_directory_the_user_cannot_enter_is_one_line(user: User, image: Image) -> None:
    """Started from a directory it may not enter (root's home, as after ``sudo -u``)."""
    proc = user.hpcstack("exec", str(image.sif), "true", cwd="/root")
    assert proc.returncode == 1
    assert proc.stderr == "hpcstack: error: /root: working directory cannot be entered " \
                          "(permission denied); cd to a directory of yours first\n"


@pytest.mark.integration
def test_cwd_outside_home_and_binds(
    user: User, image: Image, shared_cache: Path, scratch: Callable[[str], Path]
) -> None:
    """A working directory the image lacks (the repository) and a --bind to a new path."""
    data = scratch("bind")
    user.run(["sh", "-c", f"echo bound > {data}/f"], check=True)
    proc = hpc(
        user,
        {
            "image": image.sif,
            "binds": [f"{data}:/data:ro"],
            "args": ["sh", "-c", "pwd; test -f pyproject.toml && cat /data/f"],
        },
        cache=shared_cache,
        cwd=REPO,
    )
    assert proc.stdout == f"{REPO}\nbound\n", proc.stderr
    assert "ch-run cannot bind read-only" in proc.stderr


@pytest.mark.integration
def test_host_tmp_is_shared(user: User, image: Image, shared_cache: Path) -> None:
    """ch-run would put $TMPDIR at /tmp; hpcstack keeps the host's /tmp there, as Apptainer."""
    name = f"/tmp/hpcstack-rt-{uuid.uuid4().hex[:8]}"
    user.run(["sh", "-c", f"echo shared > {name}"], check=True)
    proc = hpc(
        user,
        {"image": image.sif, "args": ["sh", "-c", f'cat {name}; echo "$TMPDIR"']},
        cache=shared_cache,
    )
    assert proc.stdout == f"shared\n{user.home / 'tmp'}\n", proc.stderr
    user.run(["rm", "-f", name])


@pytest.mark.integration
def test_second_launch_reuses_the_extracted_copy(
    user: User, image: Image, scratch: Callable[[str], Path]
) -> None:
    """The first launch extracts (clearing a killed extraction's leftovers); the next reuses it."""
    cache = scratch("cache")
    key = f"{read_sif(image.sif).id}-{image.sif.stat().st_mtime_ns}"
    stale = cache / "hpcstack" / "images" / f".{key}.killed"
    user.run(["mkdir", "-p", str(stale / "root" / "usr")], check=True)
    first = hpc(user, {"image": image.sif, "args": ["true"]}, cache=cache)
    assert first.returncode == 0, first.stderr
    assert [p.name for p in extracted(cache)] == [key]
    assert not stale.exists()
    root = extracted(cache)[0]
    user.run(["touch", str(root / "hpcstack-marker")], check=True)
    second = hpc(user, {"image": image.sif, "args": ["ls", "/hpcstack-marker"]}, cache=cache)
    assert (second.returncode, second.stdout) == (0, "/hpcstack-marker\n"), second.stderr
    assert extracted(cache) == [root]  # the same copy, marker and all: nothing extracted


@pytest.mark.integration
def test_concurrent_first_runs_extract_once(
    user: User, image: Image, scratch: Callable[[str], Path]
) -> None:
    cache = scratch("cache")
    spec = json.dumps(
        {"action": "exec", "image": str(image.sif), "args": ["cat", "/etc/debian_version"]}
    )
    procs = [
        subprocess.Popen(
            user.argv(
                [PYTHON, str(HELPER), "charliecloud", spec], user.env(XDG_CACHE_HOME=str(cache))
            ),
            cwd=user.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    assert all(rc == 0 and out.startswith("12.") for out, _, rc in results), results
    images = cache / "hpcstack" / "images"
    assert len(extracted(cache)) == 1
    assert [p.name for p in images.iterdir() if p.name.startswith(".") and p.is_dir()] == []


@pytest.mark.integration
def test_copies_of_replaced_images_go_unless_in_use(
    user: User, image: Image, scratch: Callable[[str], Path]
) -> None:
    """A rebuilt image's old copy is removed by the next extraction, except while a
    container still runs from it; ``hpcstack cache prune`` then removes every unused copy."""
    cache, work = scratch("cache"), scratch("replaced")
    env = {"XDG_CACHE_HOME": str(cache), "HPCSTACK_RUNTIME": "charliecloud"}
    sif = work / "app.sif"
    user.run(["cp", str(image.sif), str(sif)], check=True)
    assert hpc(user, {"image": sif, "args": ["true"]}, cache=cache).returncode == 0
    [first] = extracted(cache)
    running = subprocess.Popen(  # through the CLI: hpcstack exec becomes the container
        user.argv([str(HPCSTACK_PREFIX / "bin" / "hpcstack"), "exec", str(sif), "sh", "-c",
                   "echo up; read line"], user.env(**env)),
        cwd=user.home, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert running.stdout.readline() == "up\n"
        user.run(["touch", "-d", "1 minute", str(sif)], check=True)  # "rebuilt"
        assert hpc(user, {"image": sif, "args": ["true"]}, cache=cache).returncode == 0
        assert len(extracted(cache)) == 2 and first in extracted(cache)  # in use: kept
    finally:
        running.communicate("done\n", timeout=60)
    assert running.returncode == 0
    user.run(["touch", "-d", "2 minutes", str(sif)], check=True)
    assert hpc(user, {"image": sif, "args": ["true"]}, cache=cache).returncode == 0
    [third] = extracted(cache)  # both earlier copies went: their image changed
    assert third not in (first,) and third.name.endswith(str(sif.stat().st_mtime_ns))
    listed = json.loads(user.hpcstack("cache", "list", "--json", env=env, check=True).stdout)
    assert [(e["kind"], e["source"]) for e in listed] == [("image", str(sif))]
    assert listed[0]["size"] > 0
    pruned = user.hpcstack("cache", "prune", env=env, check=True)
    assert "Removed 1 entries" in pruned.stderr
    assert extracted(cache) == []
    assert list((cache / "hpcstack" / "images").iterdir()) == []  # no lock or source left


@pytest.mark.integration
def test_plain_directory_and_bare_squashfs(user: User, image: Image, shared_cache: Path) -> None:
    """No /.singularity.d: the command runs directly; a .sqfs file is extracted like a SIF."""
    show = ["sh", "-c", 'echo "${HPCSTACK_IMAGE_VAR:-unset} $PWD"']
    plain = hpc(user, {"image": image.plain, "args": show}, cache=shared_cache, cwd=user.home)
    assert plain.stdout == f"unset {user.home}\n", plain.stderr
    bare = hpc(user, {"image": image.sqfs, "args": show}, cache=shared_cache, cwd=user.home)
    assert bare.stdout == f"from-image {user.home}\n", bare.stderr


@pytest.mark.integration
def test_execute_leaves_no_wrapper_process(user: User, image: Image, shared_cache: Path) -> None:
    proc = hpc(
        user,
        {"image": image.sif, "args": ["sh", "-c", "echo pid=$$"]},
        cache=shared_cache,
        extra=("--execute",),
    )
    helper_pid = proc.stderr.split("helper-pid=")[1].split()[0]
    assert proc.stdout == f"pid={helper_pid}\n"


@pytest.mark.integration
def test_gpu_request_warns(user: User, image: Image, shared_cache: Path) -> None:
    proc = hpc(user, {"image": image.sif, "args": ["true"], "gpu": "nvidia"}, cache=shared_cache)
    assert proc.returncode == 0
    assert "ch-fromhost --nvidia" in proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad-partition"])
def test_broken_image_is_one_line(
    user: User, image: Image, damage: str, scratch: Callable[[str], Path]
) -> None:
    cache = scratch("cache")
    bad = scratch(f"bad-{damage}") / "bad.sif"
    if damage == "garbage":
        user.run(["sh", "-c", f"head -c 100000 /dev/urandom > {bad}"], check=True)
    elif damage == "truncated":
        user.run(["sh", "-c", f"head -c 20000 {image.sif} > {bad}"], check=True)
    else:
        user.run(
            [
                "sh",
                "-c",
                f"head -c 300000 /dev/urandom > {bad}.fs && siftool new {bad} && "
                f"siftool add {bad} {bad}.fs --datatype 4 --parttype 2 --partfs 1 "
                "--partarch 2",
            ],
            check=True,
        )
    proc = hpc(user, {"image": bad, "args": ["true"]}, cache=cache)
    expected = {
        "garbage": "not a SIF image (bad magic)",
        "truncated": "truncated SIF image",
        "bad-partition": "cannot extract its SquashFS partition",
    }[damage]
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"hpcstack: error: {bad}: ") and expected in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    images = cache / "hpcstack" / "images"
    left = (
        [p.name for p in images.iterdir() if not p.name.endswith(".lock")]
        if images.exists()
        else []
    )
    assert left == []  # nothing half-extracted left behind
