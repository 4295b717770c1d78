"""The unprivileged builder, end to end, as an ordinary user.

Real components throughout: mmdebstrap, unshare (fakeroot), mksquashfs,
siftool, skopeo/umoci against a real docker-registry, Charliecloud to run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import HPCSTACK_PREFIX, Apptainer, User, need
from hpcstack.deffile.parser import stored_text
from hpcstack.runtime.sif import DataType, read_sif

pytestmark = pytest.mark.integration

HELLO_DEF = Path(__file__).resolve().parent.parent / "examples" / "hello.def"


def put(user: User, path: Path, text: str) -> Path:
    """Write a file the user owns (the suite may run as root)."""
    path.write_text(text)
    os.chown(path, user.uid, user.gid)
    return path


def squashfs_listing(sif: Path, *paths: str) -> str:
    offset = read_sif(sif).primary_partition().offset
    proc = subprocess.run(
        ["unsquashfs", "-lln", "-o", str(offset), str(sif), *paths],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def no_build_leftovers(tmp: Path) -> None:
    """Nothing of a failed build remains: no work directory in its TMPDIR, no mount."""
    assert not list(tmp.glob("hpcstack-build-*")), "work directory left behind"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "hpcstack-build" not in mounts


@pytest.fixture(scope="module")
def hello(user: User) -> Path:
    need("mmdebstrap", "unshare", "mksquashfs", "siftool", "ch-run")
    work = user.workdir("hello")
    put(user, work / "hello.def", HELLO_DEF.read_text())
    user.hpcstack("build", "hello.sif", "hello.def", cwd=work, check=True)
    return work / "hello.sif"


def test_hello_runs_its_runscript(user: User, hello: Path) -> None:
    proc = user.hpcstack("run", str(hello), check=True)
    assert proc.stdout.strip() == "Hello, world!"


def test_run_passes_arguments(user: User, hello: Path) -> None:
    proc = user.hpcstack("run", str(hello), "--greeting=Bonjour", check=True)
    assert proc.stdout.strip() == "Bonjour"


def test_exec_sees_environment_section(user: User, hello: Path) -> None:
    proc = user.hpcstack("exec", str(hello), "sh", "-c", "echo $VAR; echo $BUILT_BY", check=True)
    assert proc.stdout.splitlines() == ["hello from the container environment", "hpcstack"]


def test_exec_passes_exit_status(user: User, hello: Path) -> None:
    assert user.hpcstack("exec", str(hello), "sh", "-c", "exit 7").returncode == 7


def test_exec_leaves_the_command_line_alone(user: User, hello: Path) -> None:
    """Options end at the image, as in Apptainer: the command's -h, -B and -- are its own."""
    words = ["-B/tmp", "-h", "--help", "-xh", "-nohttpd", "--nv", "--", "x"]
    proc = user.hpcstack("exec", str(hello), "echo", *words, check=True)
    assert proc.stdout.split() == words
    data = user.workdir("exec-bind")
    put(user, data / "note.txt", "bound\n")
    proc = user.hpcstack("exec", f"-B{data}:/data:ro", "--", str(hello), "cat", "/data/note.txt",
                         check=True)
    assert proc.stdout == "bound\n"


def test_sif_layout(hello: Path) -> None:
    listing = subprocess.run(
        ["siftool", "list", str(hello)], capture_output=True, text=True, check=True
    ).stdout
    assert "Def.FILE" in listing
    assert "JSON.Generic" in listing
    assert re.search(r"FS \(Squashfs/\*System/amd64\)", listing)
    with hello.open("rb") as fh:
        assert fh.read(31) == b"#!/usr/bin/env run-singularity\n"
    sif = read_sif(hello)
    assert sif.deffile() == stored_text(HELLO_DEF.read_text())  # from Bootstrap:, as Apptainer
    assert sif.deffile().startswith("Bootstrap: debootstrap\n")
    assert {d.group for d in sif.descriptors} == {1}  # every object in Apptainer's group 1


def test_root_owned_files_stay_uid_0(hello: Path) -> None:
    line = squashfs_listing(hello, "usr/bin/hello").splitlines()[-1]
    assert line.split()[1] == "0/0", line
    apt = squashfs_listing(hello, "var/cache/apt/archives/partial").splitlines()[-1]
    assert apt.split()[1] == "42/0", apt  # _apt's directory keeps its subordinate owner


def test_labels(hello: Path) -> None:
    labels = read_sif(hello).labels()
    assert labels["Author"] == "hpcstack"
    assert labels["Version"] == "1.0"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "debootstrap"
    inside = squashfs_listing(hello, ".singularity.d")
    for name in (
        "labels.json",
        "runscript",
        "runscript.help",
        "test",
        "Singularity",
        "env/90-environment.sh",
        "actions/exec",
        "actions/run",
        "actions/shell",
    ):
        assert f".singularity.d/{name}" in inside, name


def test_build_cache_reused(user: User, hello: Path) -> None:
    """The bootstrap of the first build is a cache hit for the second."""
    listed = json.loads(user.hpcstack("cache", "list", "--json", check=True).stdout)
    assert any(e["kind"] == "debootstrap" and "bookworm" in e["source"] for e in listed)
    work = hello.parent
    proc = user.hpcstack("build", "--force", "again.sif", "hello.def", cwd=work, check=True)
    assert "mmdebstrap" not in proc.stderr and "I: success" not in proc.stderr
    assert (
        user.hpcstack("run", str(work / "again.sif"), check=True).stdout.strip() == "Hello, world!"
    )


def test_sandbox_is_a_writable_directory(user: User, hello: Path) -> None:
    work = hello.parent
    user.hpcstack("build", "--sandbox", "--notest", "box", "hello.def", cwd=work, check=True)
    assert (work / "box" / "usr" / "bin" / "hello").is_file()
    assert (work / "box" / ".singularity.d" / "runscript").is_file()
    proc = user.hpcstack("run", str(work / "box"), check=True)
    assert proc.stdout.strip() == "Hello, world!"


def test_localimage_from_sif(user: User, hello: Path) -> None:
    work = hello.parent
    put(
        user,
        work / "local.def",
        f"""Bootstrap: localimage
From: {hello}

%post
    echo layered > /layered.txt

%environment
    export LAYER=second

%help
    The layer's help.
""",
    )
    user.hpcstack("build", "local.sif", "local.def", cwd=work, check=True)
    proc = user.hpcstack(
        "exec", str(work / "local.sif"), "sh", "-c", "cat /layered.txt; hello", check=True
    )
    assert proc.stdout.splitlines() == ["layered", "Hello, world!"]
    # As apptainer build: the base's %environment stays under ours, its help and its
    # definition (in bootstrap_history) are kept, and what %post made is 0664 (umask 002).
    proc = user.hpcstack("exec", str(work / "local.sif"), "sh", "-c",
                         'echo "$GREETING_LANG $LAYER"; cat /.singularity.d/runscript.help; '
                         "head -5 /.singularity.d/bootstrap_history/Apptainer0", check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == "C second"
    assert "Prints a friendly greeting with GNU hello." in lines[1]
    assert any(line.startswith("Bootstrap: debootstrap") for line in lines[2:])
    listing = squashfs_listing(work / "local.sif", "/layered.txt")
    assert re.search(r"^-rw-rw-r-- 0/0 .* squashfs-root/layered\.txt$", listing, re.M), listing


def test_two_stage_build_keeps_only_the_binary(user: User, hello: Path) -> None:
    work = user.workdir("multistage")
    put(
        user, work / "hi.c", '#include <stdio.h>\nint main(void){puts("hi from stage");return 0;}\n'
    )
    put(
        user,
        work / "multi.def",
        """Bootstrap: debootstrap
OSVersion: bookworm
Stage: build

%files
    hi.c /src/hi.c

%post
    apt-get update
    apt-get install -y --no-install-recommends gcc libc6-dev
    gcc -O2 -o /usr/local/bin/hi /src/hi.c

Bootstrap: debootstrap
OSVersion: bookworm
Stage: final

%files from build
    /usr/local/bin/hi

%runscript
    exec /usr/local/bin/hi
""",
    )
    proc = user.hpcstack("build", "multi.sif", "multi.def", cwd=work, check=True)
    assert (
        user.hpcstack("run", str(work / "multi.sif"), check=True).stdout.strip() == "hi from stage"
    )
    assert (
        user.hpcstack("exec", str(work / "multi.sif"), "sh", "-c", "command -v gcc").returncode != 0
    )
    sizes = dict(re.findall(r"stage (\S+): ([\d.]+) MiB", proc.stderr))
    assert float(sizes["final"]) < float(sizes["build"]), proc.stderr


# --- Bootstrap: docker from a real registry --------------------------------------------


@pytest.fixture(scope="module")
def registry(user: User, tmp_path_factory: pytest.TempPathFactory):
    """A TLS docker-registry on 127.0.0.1 with a self-signed certificate, filled with a
    Debian image made from a mmdebstrap root filesystem (standing in for Docker Hub)."""
    need("docker-registry", "openssl", "skopeo", "umoci", "mmdebstrap")
    root = tmp_path_factory.mktemp("registry")
    # Beside the homes, not in one: other accounts (the service's, a second user) read the
    # CA too, and homes are private (0700). Not under /tmp, /var/tmp or /run either: U2CB's
    # jail gives builds private ones, over its bind of the CA; and under /home, which the
    # Apptainer tree's entry binds (tests/conftest.py). Per process: test runs in parallel
    # must not regenerate each other's certificate.
    parent = Path("/home/.hpcstack-test") if os.geteuid() == 0 else user.workdir("certs")
    parent.mkdir(mode=0o755, exist_ok=True)
    certs = Path(tempfile.mkdtemp(prefix=f"registry-certs-{os.getpid()}-", dir=parent))
    certs.chmod(0o755)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(certs / "key.pem"),
            "-out",
            str(certs / "ca.crt"),
        ],
        check=True,
        capture_output=True,
    )
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "config.yml").write_text(f"""version: 0.1
log: {{level: error}}
storage: {{filesystem: {{rootdirectory: {root / "data"}}}}}
http:
  addr: 127.0.0.1:{port}
  tls: {{certificate: {certs / "ca.crt"}, key: {certs / "key.pem"}}}
""")
    server = subprocess.Popen(
        ["docker-registry", "serve", str(root / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The image: a mmdebstrap root filesystem as the single layer of an OCI image.
        work = user.workdir(f"registry-image-{os.getpid()}")
        user.run(
            [
                "mmdebstrap",
                "--mode=unshare",
                "--variant=minbase",
                "--quiet",
                "--format=tar",
                "bookworm",
                str(work / "rootfs.tar"),
            ],
            check=True,
            # Its temporary root must be enterable by the user's subordinate root: not
            # under the private (0700) home where the user's TMPDIR lies.
            env={"TMPDIR": "/tmp"},
        )
        layout = f"{work}/oci:bookworm"
        for argv in (
            ["umoci", "init", "--layout", f"{work}/oci"],
            ["umoci", "new", "--image", layout],
            ["umoci", "raw", "add-layer", "--image", layout, str(work / "rootfs.tar")],
            [
                "umoci",
                "config",
                "--image",
                layout,
                "--config.env",
                "FROM_IMAGE=debian-bookworm",
                "--config.cmd",
                "/bin/echo",
                "--config.cmd",
                "default command",
            ],
        ):
            user.run(argv, check=True)
        subprocess.run(["chmod", "-R", "a+rX", str(certs)], check=True)  # key too: test only
        user.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                f"--dest-cert-dir={certs}",
                f"oci:{layout}",
                f"docker://127.0.0.1:{port}/debian:bookworm",
            ],
            check=True,
        )
        yield {"host": f"127.0.0.1:{port}", "certs": certs}
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(certs, ignore_errors=True)


def test_docker_bootstrap_from_tls_registry(user: User, registry) -> None:
    work = user.workdir("docker")
    put(
        user,
        work / "docker.def",
        f"""Bootstrap: docker
From: {registry["host"]}/debian:bookworm

%post
    echo "from the registry" > /from-docker.txt
""",
    )
    user.hpcstack(
        "build",
        "--docker-cert-dir",
        str(registry["certs"]),
        "docker.sif",
        "docker.def",
        cwd=work,
        check=True,
    )
    sif = work / "docker.sif"
    proc = user.hpcstack(
        "exec", str(sif), "sh", "-c", "cat /from-docker.txt; echo $FROM_IMAGE", check=True
    )
    assert proc.stdout.splitlines() == ["from the registry", "debian-bookworm"]
    # No %runscript: ENTRYPOINT/CMD become the runscript, arguments replace CMD.
    assert user.hpcstack("run", str(sif), check=True).stdout.strip() == "default command"
    assert (
        user.hpcstack("run", str(sif), "/bin/echo", "other", check=True).stdout.strip() == "other"
    )


def test_docker_uri_build_spec(user: User, registry) -> None:
    work = user.workdir("docker-uri")
    user.hpcstack(
        "build",
        "--docker-cert-dir",
        str(registry["certs"]),
        "uri.sif",
        f"docker://{registry['host']}/debian:bookworm",
        cwd=work,
        check=True,
    )
    assert (work / "uri.sif").is_file()


def test_docker_untrusted_certificate_is_refused(user: User, registry) -> None:
    work = user.workdir("docker-untrusted")
    put(user, work / "d.def", f"Bootstrap: docker\nFrom: {registry['host']}/debian:bookworm\n")
    proc = user.hpcstack("build", "d.sif", "d.def", cwd=work)
    assert proc.returncode == 1
    assert proc.stderr.startswith("hpcstack: error: d.def:1: cannot fetch docker://"), proc.stderr
    assert "certificate" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (work / "d.sif").exists()


# --- bad inputs ------------------------------------------------------------------------


def build_fails(user: User, name: str, text: str, *extra: str) -> str:
    """Build ``text`` as ``NAME.def``; assert a clean one-line failure; return the line."""
    work = user.workdir(f"bad-{name}")
    tmp = user.workdir(f"bad-{name}-tmp")
    put(user, work / f"{name}.def", text)
    proc = user.hpcstack("build", *extra, f"{name}.sif", f"{name}.def", cwd=work,
                         env={"TMPDIR": str(tmp)})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpcstack: error:")]
    assert len(errors) == 1, proc.stderr
    assert not (work / f"{name}.sif").exists()
    assert not list(work.glob(".*hpcstack*"))
    no_build_leftovers(tmp)
    return errors[0].removeprefix("hpcstack: error: ")


def test_unknown_agent(user: User) -> None:
    msg = build_fails(user, "agent", "Bootstrap: floppy\nFrom: x\n")
    assert msg.startswith("agent.def:1:") and "floppy" in msg


def test_missing_from(user: User) -> None:
    msg = build_fails(user, "nofrom", "Bootstrap: docker\n\n%post\n    true\n")
    assert msg.startswith("nofrom.def:1:") and "From" in msg


def test_unknown_section(user: User) -> None:
    msg = build_fails(user, "section", "Bootstrap: scratch\n\n%postinstall\n    true\n")
    assert msg.startswith("section.def:3:") and "postinstall" in msg


def test_post_failure_names_section_and_status(user: User, hello: Path) -> None:
    msg = build_fails(
        user,
        "postfail",
        "Bootstrap: debootstrap\nOSVersion: bookworm\n\n"
        "%post\n    echo about to fail\n    exit 3\n",
    )
    assert msg == "postfail.def:4: %post failed with exit status 3"


def test_missing_files_source(user: User) -> None:
    msg = build_fails(user, "files", "Bootstrap: scratch\n\n%files\n    nothere.txt /x\n")
    assert msg == "files.def:4: %files: nothere.txt: no such file or directory"


def test_existing_output_needs_force(user: User) -> None:
    work = user.workdir("exists")
    put(user, work / "s.def", "Bootstrap: scratch\n")
    put(user, work / "s.sif", "precious")
    proc = user.hpcstack("build", "s.sif", "s.def", cwd=work)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip() == "hpcstack: error: s.sif: already exists; use --force to overwrite it"
    )
    assert (work / "s.sif").read_text() == "precious"


@pytest.mark.parametrize("uri", ["library://alpine:3.19", "oras://ghcr.io/x/y:1"])
def test_unsupported_uri_specs(user: User, uri: str) -> None:
    work = user.workdir("uri")
    proc = user.hpcstack("build", "u.sif", uri, cwd=work)
    assert proc.returncode == 1
    scheme = uri.split(":")[0]
    assert proc.stderr.strip() == (
        f"hpcstack: error: {uri}: {scheme}:// images are not "
        "supported here; use docker://, a local SIF or a "
        "definition file"
    )
    assert not (work / "u.sif").exists()


@pytest.mark.parametrize("agent", ["library", "oras"])
def test_unsupported_agents(user: User, agent: str) -> None:
    msg = build_fails(user, agent, f"Bootstrap: {agent}\nFrom: x/y:1\n")
    assert msg.startswith(f"{agent}.def:1: Bootstrap: {agent} is not supported here")


def test_sigint_during_post_leaves_nothing(user: User, hello: Path) -> None:
    work = user.workdir("sigint")
    tmp = user.workdir("sigint-tmp")
    put(
        user,
        work / "slow.def",
        "Bootstrap: debootstrap\nOSVersion: bookworm\n\n%post\n    touch /started\n    sleep 600\n",
    )
    env = user.env(TMPDIR=str(tmp))
    proc = subprocess.Popen(
        user.argv(
            [str(HPCSTACK_PREFIX / "bin" / "hpcstack"), "build", "slow.sif", "slow.def"], env
        ),
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (
                subprocess.run(
                    ["pgrep", "-u", user.name, "-f", "sleep 600"], capture_output=True
                ).returncode
                == 0
            ):
                break
            time.sleep(0.2)
        else:
            pytest.fail("%post never started")
        builder = subprocess.run(
            ["pgrep", "-u", user.name, "-f", "bin/hpcstack build"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for pid in builder:
            os.kill(int(pid), signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not (work / "slow.sif").exists()
    assert not list(work.glob(".*hpcstack*"))
    time.sleep(0.5)
    for pattern in ("sleep 600", "hpcstack.build.inside", "slow.def"):
        left = subprocess.run(["pgrep", "-u", user.name, "-af", pattern], capture_output=True,
                              text=True)
        assert left.stdout == "", f"processes left: {left.stdout}"
    no_build_leftovers(tmp)


def test_sigkill_of_the_builder_ends_its_build_and_prune_cleans_up(user: User,
                                                                  hello: Path) -> None:
    """SIGKILL (the OOM killer, a job past its limit) runs no cleanup: the build's
    namespace still ends with it, and ``hpcstack cache prune`` removes the work
    directory it left (files of subordinate IDs the user could not remove) while a
    running build's directory stays."""
    work, tmp = user.workdir("sigkill"), user.workdir("sigkill-tmp")
    put(user, work / "slow.def", f"Bootstrap: localimage\nFrom: {hello}\n\n%post\n"
        "    mkdir /var/lib/apt/owned && chown _apt /var/lib/apt/owned\n    sleep 601\n")
    env = user.env(TMPDIR=str(tmp))
    argv = [str(HPCSTACK_PREFIX / "bin" / "hpcstack"), "build", "slow.sif", "slow.def"]
    killed, running = (subprocess.Popen(user.argv(argv, env), cwd=work, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                       for _ in range(2))
    try:
        deadline = time.monotonic() + 300
        while len(pgrep(user, "sleep 601")) < 2:
            assert time.monotonic() < deadline, "%post never started"
            time.sleep(0.2)
        victim = next(pid for pid in pgrep(user, "bin/hpcstack build")
                      if str(killed.pid) in pgrep_parents(pid))
        os.kill(int(victim), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(pgrep(user, "sleep 601")) != 1:  # the other build's sleep remains
            assert time.monotonic() < deadline, "the killed build's namespace lived on"
            time.sleep(0.2)
        assert len(list(tmp.glob("hpcstack-build-*"))) == 2
        time.sleep(11)  # prune leaves work directories younger than 10 s alone
        pruned = user.hpcstack("cache", "prune", check=True,  # (an empty cache of its own)
                               env={"TMPDIR": str(tmp), "XDG_CACHE_HOME": str(tmp / "c")})
        assert pruned.stderr.count("left by a build that was killed") == 1, pruned.stderr
        assert len(list(tmp.glob("hpcstack-build-*"))) == 1  # the running build's
        assert len(pgrep(user, "sleep 601")) == 1
    finally:
        for proc in (killed, running):
            proc.kill()
        subprocess.run(["pkill", "-9", "-u", user.name, "-f", "sleep 601"], check=False)


def pgrep(user: User, pattern: str) -> list[str]:
    return subprocess.run(["pgrep", "-u", user.name, "-f", pattern], capture_output=True,
                          text=True).stdout.split()


def pgrep_parents(pid: str) -> str:
    """The PIDs above ``pid``, as one string (runuser and env stand between)."""
    out, current = [], pid
    while current not in ("0", "1"):
        current = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()[1]
        out.append(current)
    return " ".join(out)


# --- %setup, %test ---------------------------------------------------------------------


def test_setup_writes_the_image_but_not_the_host(user: User, hello: Path) -> None:
    """%setup runs as fake root with $APPTAINER_ROOTFS set and the host read-only.

    Read-only everywhere: on the root filesystem (the home here) and on a
    filesystem mounted on its own, as /home, /tmp or a scratch area often is.
    """
    work = user.workdir("setup")
    scratch = work / "scratch"
    user.run(["rm", "-f", str(user.home / "setup-was-here")], check=True)
    user.run(["mkdir", str(scratch)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"uid={user.uid},gid={user.gid}", "tmpfs",
                    str(scratch)], check=True)
    try:
        put(user, work / "setup.def", f"""Bootstrap: localimage
From: {hello}

%setup
    echo "$SINGULARITY_ROOTFS" > "$APPTAINER_ROOTFS/rootfs-path"
    for f in {user.home}/setup-was-here {scratch}/setup-was-here; do
        touch $f && echo $f >> "$APPTAINER_ROOTFS/written" || true
    done
    test "$(id -u)" = 0
""")
        user.hpcstack("build", "setup.sif", "setup.def", cwd=work, check=True)
        proc = user.hpcstack("exec", str(work / "setup.sif"), "sh", "-c",
                             "cat /rootfs-path; cat /written 2>&1 || true", check=True)
        assert proc.stdout.splitlines()[0].endswith("/rootfs")
        assert "No such file" in proc.stdout
        assert not (user.home / "setup-was-here").exists()
        assert not (scratch / "setup-was-here").exists()
    finally:
        subprocess.run(["umount", str(scratch)], check=True)


def test_failing_test_section_and_notest(user: User, hello: Path) -> None:
    work = user.workdir("testsection")
    text = f"Bootstrap: localimage\nFrom: {hello}\n\n%test\n    echo checking\n    exit 4\n"
    put(user, work / "t.def", text)
    proc = user.hpcstack("build", "t.sif", "t.def", cwd=work)
    assert proc.returncode == 1
    assert "hpcstack: error: t.def:4: %test failed with exit status 4" in proc.stderr
    assert not (work / "t.sif").exists()
    user.hpcstack("build", "--notest", "t.sif", "t.def", cwd=work, check=True)
    assert (work / "t.sif").is_file()


def test_user_without_subordinate_ids_is_told_why(user: User) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second account")
    name = "hpcnosub"
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-m", name], check=True)
    subprocess.run(["usermod", "--del-subuids", "1-4294967294", "--del-subgids",
                    "1-4294967294", name], check=False, capture_output=True)
    import pwd

    pw = pwd.getpwnam(name)
    other = User(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    other.run(["mkdir", "-p", str(other.home / "tmp")], check=True)
    (other.home / "s.def").write_text("Bootstrap: scratch\n")
    proc = other.hpcstack("build", "s.sif", "s.def")
    assert proc.returncode == 1
    assert proc.stderr.startswith("hpcstack: error: /etc/subuid: no subordinate ID range")
    assert "usermod --add-subuids" in proc.stderr


# --- what Apptainer's own build writes (issue 12) -------------------------------------------

SHEBANG_DEF = """Bootstrap: debootstrap
OSVersion: bookworm

%runscript
    #!/bin/bash
    echo "runscript in bash ${BASH_VERSION%%.*}"

%startscript
    #!/bin/bash
    echo "started in bash"

%test
    #!/bin/bash
    [[ -n "$BASH_VERSION" ]] && echo "test in bash"
"""


def image_file(sif: Path, path: str) -> str:
    offset = read_sif(sif).primary_partition().offset
    return subprocess.run(["unsquashfs", "-cat", "-o", str(offset), str(sif), path],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def shebang(user: User, hello: Path) -> Path:
    """Built on the bootstrap ``hello`` cached (same suite and mirrors): a warm build.

    Its ``%test`` is bash; the build runs it, so the build itself must not fail.
    """
    work = user.workdir("shebang")
    put(user, work / "shebang.def", SHEBANG_DEF)
    user.hpcstack("build", "shebang.sif", "shebang.def", cwd=work, check=True)
    return work / "shebang.sif"


def test_shebang_lines_pick_the_interpreter(user: User, shebang: Path) -> None:
    """Point 4: ``#!/bin/bash`` first in %runscript, %test, %startscript is the interpreter."""
    assert user.hpcstack("run", str(shebang), check=True).stdout.strip() == "runscript in bash 5"
    assert user.hpcstack("test", str(shebang), check=True).stdout.strip() == "test in bash"
    for name in ("runscript", "startscript", "test"):
        assert image_file(shebang, f".singularity.d/{name}").startswith("#!/bin/bash\n\n"), name


def test_apptainer_inspects_our_metadata_object(user: User, hello: Path,
                                                apptainer: Apptainer) -> None:
    """Point 2: ``apptainer inspect`` reads each attribute from our inspect-metadata.json,
    and each equals the file it stands for in the image, as on Apptainer's own images."""
    sif = read_sif(hello)
    assert sif.find(DataType.GENERIC_JSON, "inspect-metadata.json") is not None
    assert sif.find(DataType.GENERIC_JSON, "labels.json") is None
    flags = ["--labels", "--runscript", "--test", "--helpfile", "--deffile", "--environment",
             "--startscript"]
    proc = apptainer.run(user, ["inspect", "--json", *flags, str(hello)], check=True)
    attributes = json.loads(proc.stdout)["data"]["attributes"]
    for name, path in (("runscript", "runscript"), ("test", "test"),
                       ("helpfile", "runscript.help"), ("deffile", "Singularity"),
                       ("startscript", "startscript")):
        assert attributes[name] == image_file(hello, f".singularity.d/{path}").rstrip("\n"), name
    env = attributes["environment"]
    assert set(env) == {"/.singularity.d/env/90-environment.sh",
                        "/.singularity.d/env/91-environment.sh"}
    assert env["/.singularity.d/env/91-environment.sh"] == "export BUILT_BY=hpcstack"
    labels = attributes["labels"]
    assert labels == json.loads(image_file(hello, ".singularity.d/labels.json"))
    assert labels["org.label-schema.usage.singularity.deffile.osversion"] == "bookworm"
    assert labels["org.label-schema.usage.hpcstack.version"]
    assert re.fullmatch(r"[A-Z][a-z]+day_\d+_[A-Z][a-z]+_\d{4}_\d+:\d+:\d+_\w+",
                        labels["org.label-schema.build-date"])
    # the same object answers the single-attribute flags as text
    proc = apptainer.run(user, ["inspect", "--runscript", str(hello)], check=True)
    assert proc.stdout.strip() == attributes["runscript"].strip()


def test_singularity_d_as_apptainer_lays_it_out(hello: Path) -> None:
    """Point 3: libs/, a default startscript, 94-appsbase, 95-apps, 99-runtimevars."""
    listing = squashfs_listing(hello, ".singularity.d")
    assert re.search(r"^drwxr-xr-x 0/0 .* squashfs-root/\.singularity\.d/libs$", listing, re.M)
    for name in ("startscript", "env/94-appsbase.sh", "env/95-apps.sh", "env/99-base.sh",
                 "env/99-runtimevars.sh"):
        assert re.search(rf"^-rwxr-xr-x 0/0 .* squashfs-root/\.singularity\.d/{name}$",
                         listing, re.M), name
    assert image_file(hello, ".singularity.d/startscript").startswith("#!/bin/sh\n")


def test_no_build_host_resolver_in_the_image(hello: Path) -> None:
    """Point 5: /etc/resolv.conf and /etc/hosts empty, 0644, root's, as Apptainer leaves them."""
    for name in ("etc/resolv.conf", "etc/hosts"):
        line = squashfs_listing(hello, name).splitlines()[-1].split()
        assert line[:3] == ["-rw-r--r--", "0/0", "0"], line


def test_bootstrap_is_debootstraps_minbase(hello: Path) -> None:
    """Point 7: merged /usr by symlinks, not by usrmerge (which brings perl); nothing that
    Apptainer's debootstrap excludes."""
    info = squashfs_listing(hello, "var/lib/dpkg/info")
    for absent in ("usrmerge", "perl", "e2fsprogs", "libperl5.36:amd64"):
        assert f"/var/lib/dpkg/info/{absent}.list\n" not in info, absent
    for present in ("usr-is-merged", "apt", "hello", "perl-base"):
        assert f"/var/lib/dpkg/info/{present}.list\n" in info, present
    assert squashfs_listing(hello, "bin").splitlines()[-1].endswith("squashfs-root/bin -> usr/bin")


def test_actions_without_runscript_or_test(user: User, hello: Path) -> None:
    """Point 8, through Charliecloud: ``run`` with no runscript starts /bin/sh, ``test``
    with no %test passes, ``shell`` exports SHELL."""
    work = user.workdir("noscripts")
    put(user, work / "box.def", f"Bootstrap: localimage\nFrom: {hello}\n")
    user.hpcstack("build", "--sandbox", "--notest", "box", "box.def", cwd=work, check=True)
    user.run(["rm", str(work / "box/.singularity.d/runscript"),
              str(work / "box/.singularity.d/test")], check=True)
    run = user.hpcstack("run", str(work / "box"), "-c", 'echo "sh:$0"', check=True)
    assert run.stdout.splitlines()[-1] == "sh:/bin/sh", run.stdout
    assert user.hpcstack("test", str(work / "box")).returncode == 0
    shell = user.hpcstack("shell", str(work / "box"), "-c", 'echo "$SHELL"', check=True)
    assert shell.stdout.strip() == "/bin/bash"
