"""Fast tests of the builder's pure parts: layout, mirrors, SIF assembly, engines, cache."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hpcstack import __version__
from hpcstack.build import agents, engines, fakeroot, inside, layout, pack
from hpcstack.build.builder import BuildOptions, definition_text
from hpcstack.build.cache import BuildCache, key_of
from hpcstack.deffile import Script, parse
from hpcstack.errors import UserError

STAGE = parse(
    """Bootstrap: debootstrap
OSVersion: bookworm

%environment
    export A="1 2"

%runscript -c /bin/bash
    echo run "$@"

%labels
    Author me

%help
    Some help.
""",
    "x.def",
).final


def test_base_environment_has_actions_and_links() -> None:
    items = {i.path: i for i in layout.base_environment()}
    for action in layout.ACTIONS:
        f = items[f".singularity.d/actions/{action}"]
        assert f.mode == 0o755 and f.content.startswith("#!/bin/sh")
    assert items["singularity"].target == ".singularity.d/runscript"
    assert items["environment"].target == ".singularity.d/env/90-environment.sh"
    assert ".singularity.d/env/10-docker2singularity.sh" not in items


def test_base_environment_is_apptainers() -> None:
    """Issue 12 point 3: libs/, default runscript and startscript, 94/95/99-runtimevars."""
    items = {i.path: i for i in layout.base_environment()}
    assert isinstance(items[".singularity.d/libs"], layout.Dir)
    for name in ("94-appsbase.sh", "95-apps.sh", "99-base.sh", "99-runtimevars.sh"):
        assert items[f".singularity.d/env/{name}"].mode == 0o755, name
    assert items[".singularity.d/env/94-appsbase.sh"].content == ""  # no SCIF apps
    for name in ("runscript", "startscript"):  # a base image's own are kept
        default = items[f".singularity.d/{name}"]
        assert isinstance(default, layout.Default) and default.content.startswith("#!/bin/sh\n")


def test_hosts_and_resolver_are_emptied_for_a_fresh_root() -> None:
    """Issue 12 point 5: no build host resolver in the image; a base image's stays."""
    fresh = {i.path: i for i in layout.base_environment()}
    for name in ("etc/hosts", "etc/resolv.conf"):
        assert isinstance(fresh[name], layout.File)
        assert (fresh[name].content, fresh[name].mode) == ("", 0o644)
    based = {i.path: i for i in layout.base_environment(fresh=False)}
    assert isinstance(based["etc/resolv.conf"], layout.Default)


def template(*parts: str) -> Path:
    from importlib import resources

    return Path(str(resources.files("hpcstack.build").joinpath("templates", *parts)))


def sh(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", *args, "-c", script], env=env, capture_output=True,
                          text=True, check=False)


def test_99_base_keeps_the_prompt_and_survives_set_u() -> None:
    """Issue 12 point 6: run by the real /bin/sh with ``set -u``, with and without values."""
    script = f'. {template("env", "99-base.sh")}; printf "%s|%s" "$LD_LIBRARY_PATH" "$PS1"'
    bare = sh("unset PS1; " + script, {"PATH": "/usr/bin:/bin"}, "-u")  # dash presets it
    assert (bare.returncode, bare.stdout) == (0, "/.singularity.d/libs|Apptainer> "), bare.stderr
    mine = sh(script, {"PATH": "/usr/bin:/bin", "PS1": "mine$ ", "LD_LIBRARY_PATH": "/x"}, "-u")
    assert mine.stdout == "/x:/.singularity.d/libs|mine$ "


def test_99_runtimevars_applies_the_callers_path() -> None:
    """Apptainer passes --env PATH changes as SING_USER_DEFINED_*; the script applies them
    after the image's environment and unsets them."""
    script = (f'. {template("env", "99-runtimevars.sh")}; '
              'echo "$PATH|${SING_USER_DEFINED_PATH-unset}"')
    base = {"PATH": "/usr/bin:/bin"}
    out = sh(script, {**base, "SING_USER_DEFINED_PREPEND_PATH": "/pre",
                      "SING_USER_DEFINED_APPEND_PATH": "/post"}, "-u")
    assert out.stdout.strip() == "/pre:/usr/bin:/bin:/post|unset", out.stderr
    out = sh(script, {**base, "SING_USER_DEFINED_PATH": "/only:/usr/bin:/bin"}, "-u")
    assert out.stdout.strip() == "/only:/usr/bin:/bin|unset"
    assert sh(script, base, "-u").stdout.strip() == "/usr/bin:/bin|unset"


def test_95_apps_does_nothing_without_an_app() -> None:
    out = sh(f'. {template("env", "95-apps.sh")}; echo "$PATH"', {"PATH": "/usr/bin:/bin"}, "-u")
    assert (out.returncode, out.stdout.strip()) == (0, "/usr/bin:/bin"), out.stderr
    out = sh(f'. {template("env", "95-apps.sh")}; echo unreached',
             {"PATH": "/usr/bin:/bin", "SINGULARITY_APPNAME": "nosuchapp"})
    assert out.returncode == 1 and "nosuchapp" in out.stdout


@pytest.mark.skipif(Path("/.singularity.d").exists(), reason="the host itself is an image")
def test_actions_without_runscript_or_test_behave_as_apptainers() -> None:
    """Issue 12 point 8: the action scripts as the real /bin/sh runs them where there is no
    /.singularity.d (this host): run starts /bin/sh, test passes, shell exports SHELL."""
    env = {"PATH": "/usr/bin:/bin"}
    run = subprocess.run(["/bin/sh", str(template("actions", "run")), "-c", 'echo "sh:$0"'],
                         env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stdout.splitlines()[-1].startswith("sh:"), run.stderr
    test = subprocess.run(["/bin/sh", str(template("actions", "test"))], env=env,
                          capture_output=True, text=True, check=False)
    assert test.returncode == 0, test.stderr
    shell = subprocess.run(["/bin/sh", str(template("actions", "shell")), "-c", 'echo "$SHELL"'],
                           env=env, capture_output=True, text=True, check=False)
    assert shell.stdout.strip() == ("/bin/bash" if Path("/bin/bash").exists() else "/bin/sh")


def test_docker_env_is_quoted_and_path_is_set() -> None:
    items = {
        i.path: i
        for i in layout.base_environment(
            [("PATH", "/opt/bin:/usr/bin"), ("MSG", 'say "$HOME" `x`')]
        )
    }
    text = items[".singularity.d/env/10-docker2singularity.sh"].content
    assert 'export PATH="/opt/bin:/usr/bin"' in text
    # Apptainer escapes for the shell, then quotes with Go's %q: the inner quotes stay.
    assert 'export MSG="${MSG:-"say \\\\\\"\\\\$HOME\\\\\\" \\\\`x\\\\`"}"' in text


def test_docker_env_as_apptainer_writes_it() -> None:
    """Issue 12 (parity): Apptainer's 10-docker2singularity.sh, line for line: bare names
    default to empty, names that are not shell names are dropped, control characters in
    Go's escapes."""
    env = layout.docker_env(["PATH=/usr/local/bin:/usr/bin", "FROM_IMAGE=debian-bookworm",
                             "BARE", "1BAD=x", "TAB=a\tb", "EQ=k=v"])
    assert env == [("PATH", "/usr/local/bin:/usr/bin"), ("FROM_IMAGE", "debian-bookworm"),
                   ("BARE", None), ("TAB", "a\tb"), ("EQ", "k=v")]
    items = {i.path: i for i in layout.base_environment(env)}
    lines = items[".singularity.d/env/10-docker2singularity.sh"].content.splitlines()
    assert [ln for ln in lines if ln.startswith("export")] == [
        'export PATH="/usr/local/bin:/usr/bin"',
        'export FROM_IMAGE="${FROM_IMAGE:-"debian-bookworm"}"',
        'export BARE="${BARE:-}"',
        'export TAB="${TAB:-"a\\tb"}"',
        'export EQ="${EQ:-"k=v"}"',
    ]


def test_go_quote() -> None:
    assert layout.go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert layout.go_quote("héllo\x01\x7f\u00a0\n") == '"héllo\\x01\\x7f\\u00a0\\n"'


def test_final_files() -> None:
    labels = layout.labels(STAGE, arch="amd64", build_date="D", extra={"Extra": "from post"})
    files = {f.path: f for f in layout.final_files(STAGE, deffile_text="DEF", label_map=labels)}
    assert files[".singularity.d/runscript"].content == '#!/bin/bash\n\n    echo run "$@"\n'
    env = files[".singularity.d/env/90-environment.sh"]
    assert isinstance(env, layout.Append) and env.content == '\n    export A="1 2"\n'
    assert env.fresh.startswith("#!/bin/sh\n") and 'export A="1 2"' in env.fresh
    help_file = files[".singularity.d/runscript.help"]
    assert help_file.content == "    Some help.\n"  # as Apptainer
    assert isinstance(help_file, layout.Default) and help_file.mode == 0o644
    assert files[".singularity.d/Singularity"].content == "DEF"
    data = json.loads(files[".singularity.d/labels.json"].content)
    assert data["Author"] == "me" and data["Extra"] == "from post"
    assert data["org.label-schema.usage"] == "/.singularity.d/runscript.help"
    assert list(data) == sorted(data)


def test_labels_in_apptainers_order() -> None:
    """Issue 12 point 2: base image's labels, then %post's, then the build's (which replace
    both), then %labels (which replace any, as apptainer build --force); header keys in
    lower case."""
    stage = parse("Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://m/debian\n"
                  "%labels\n  Author me\n  Version 2\n", "x.def").final
    labels = layout.labels(
        stage, arch="arm64", build_date="Monday_1_June_2026_5:3:8_UTC",
        extra={"org.label-schema.build-arch": "from post", "Posted": "yes"},
        existing={"Version": "1 (base)", "Base": "kept", "org.label-schema.build-date": "old"})
    assert labels["Version"] == "2" and labels["Author"] == "me" and labels["Base"] == "kept"
    assert labels["Posted"] == "yes"
    assert labels["org.label-schema.build-arch"] == "arm64"
    assert labels["org.label-schema.build-date"] == "Monday_1_June_2026_5:3:8_UTC"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "debootstrap"
    assert labels["org.label-schema.usage.singularity.deffile.osversion"] == "bookworm"
    assert labels["org.label-schema.usage.singularity.deffile.mirrorurl"] == "http://m/debian"
    assert labels["org.label-schema.usage.hpcstack.version"] == __version__
    assert "org.label-schema.usage" not in labels  # no %help


def test_build_date_label_as_apptainer_writes_it() -> None:
    when = datetime(2026, 11, 30, 5, 3, 8, tzinfo=UTC)
    assert layout.build_date(when) == "Monday_30_November_2026_5:3:8_UTC"


@pytest.mark.parametrize(("body", "args", "shebang", "rest"), [
    ("echo hi", "", "#!/bin/sh", "echo hi\n"),
    ("#!/bin/bash\n[[ -n x ]]", "", "#!/bin/bash", "[[ -n x ]]\n"),
    ("  #!/usr/bin/env python3  \nprint(1)", "", "#!/usr/bin/env python3", "print(1)\n"),
    ("echo hi", "-c /bin/bash", "#!/bin/bash", "echo hi\n"),
])
def test_a_shebang_line_is_the_interpreter(body: str, args: str, shebang: str,
                                           rest: str) -> None:
    """Issue 12 point 4: ``#!`` on the first line of %runscript/%test/%startscript."""
    text = layout.script_file("x", Script(body, args)).content
    assert text == f"{shebang}\n\n{rest}"


def test_inspect_metadata_object() -> None:
    """Issue 12 point 2: Apptainer's JSON object, attributes from the image's files."""
    files = {
        "labels.json": '{"b": "2", "a": "1"}',
        "runscript": "#!/bin/sh\n\nexec x\n\n",
        "Singularity": "Bootstrap: scratch\n",
        "env/90-environment.sh": "#!/bin/sh\nexport A=<1>\n",
        "env/91-environment.sh": "export B=2\n",
        "test": "",
    }
    meta = layout.inspect_metadata(files)
    assert meta == {"data": {"attributes": {
        "environment": {"/.singularity.d/env/90-environment.sh": "#!/bin/sh\nexport A=<1>",
                        "/.singularity.d/env/91-environment.sh": "export B=2"},
        "labels": {"a": "1", "b": "2"},
        "runscript": "#!/bin/sh\n\nexec x",
        "deffile": "Bootstrap: scratch",
    }}, "type": "container"}
    text = layout.go_json(meta)
    assert "\\u003c1\\u003e" in text and text.startswith("{\"data\":{\"attributes\":{")
    assert json.loads(text) == meta


def test_label_lines_from_post() -> None:
    assert layout.parse_label_lines("A b c\n# no\n\nB\n") == {"A": "b c", "B": ""}


def test_docker_runscript() -> None:
    assert layout.docker_runscript(None, None) == ""
    text = layout.docker_runscript(["/entry", "--x"], ["a b"])
    assert "set -- 'a b'" in text and text.rstrip().endswith('exec /entry --x "$@"')


def test_host_mirrors_follow_the_requested_suite() -> None:
    deb822 = """Types: deb
URIs: http://mirror.site/debian
Suites: bookworm bookworm-updates
Components: main contrib

Types: deb-src
URIs: http://mirror.site/debian
Suites: bookworm

Types: deb
URIs: http://mirror.site/debian-security
Suites: bookworm-security
Components: main
"""
    lines = agents.host_mirrors(
        [
            ("debian.sources", deb822),
            ("extra.list", "deb [arch=amd64] http://x/y bookworm main # c\n"),
        ],
        "trixie",
    )
    assert lines == [
        "deb http://mirror.site/debian trixie main contrib",
        "deb http://mirror.site/debian trixie-updates main contrib",
        "deb http://mirror.site/debian-security trixie-security main",
        "deb http://x/y trixie main",
    ]


def test_sif_assembly_commands(tmp_path: Path) -> None:
    argvs = pack.sif_argvs(
        tmp_path / "o.sif", tmp_path / "d", tmp_path / "l.json", tmp_path / "s.sqfs", "arm64"
    )
    assert argvs[0] == ["siftool", "new", str(tmp_path / "o.sif")]
    assert argvs[1][:6] == ["siftool", "add", "--groupid", "1", "--datatype", "1"]
    # Apptainer's sign/verify work group by group: every object joins group 1, as in its SIFs.
    assert all(a[a.index("--groupid") + 1] == "1" for a in argvs[1:])
    assert argvs[2][argvs[2].index("--filename") + 1] == "inspect-metadata.json"
    assert argvs[2][argvs[2].index("--datatype") + 1] == "6"
    assert argvs[3][argvs[3].index("--partarch") + 1] == "4"
    assert argvs[3][argvs[3].index("--parttype") + 1] == "2"


def test_launch_script(tmp_path: Path) -> None:
    sif = tmp_path / "x.sif"
    sif.write_bytes(b"\0" * 64)
    pack.write_launch_script(sif)
    assert sif.read_bytes()[:32] == b"#!/usr/bin/env run-singularity\n\0"
    assert sif.stat().st_mode & 0o111


def test_engine_choice() -> None:
    assert engines.choose("auto", which=lambda _: None) == "builtin"
    assert engines.choose("auto", which=lambda _: "/usr/bin/apptainer") == "apptainer"
    with pytest.raises(UserError, match="not installed"):
        engines.choose("apptainer", which=lambda _: None)
    with pytest.raises(UserError, match="unknown engine"):
        engines.choose("docker")


def test_apptainer_engine_command_line() -> None:
    """The spelling; tests/test_apptainer.py builds with the real Apptainer."""
    opts = BuildOptions(sandbox=False, force=True, run_test=False, compression="gzip")
    assert engines.apptainer_argv("x.def", Path("o.sif"), opts) == [
        "apptainer",
        "build",
        "--fakeroot",
        "--force",
        "--notest",
        "--mksquashfs-args",
        "-comp gzip",
        "o.sif",
        "x.def",
    ]
    insecure = BuildOptions(docker_insecure=True, compression="zstd")
    assert engines.apptainer_argv("x.def", Path("o.sif"), insecure)[3:5] == ["--no-https",
                                                                             "--mksquashfs-args"]
    box = BuildOptions(sandbox=True)
    assert engines.apptainer_argv("x.def", Path("box"), box) == [
        "apptainer",
        "build",
        "--fakeroot",
        "--sandbox",
        "box",
        "x.def",
    ]


def test_apptainer_engine_trusts_the_cert_dir(tmp_path: Path) -> None:
    """Apptainer has no CA option; Go's TLS reads ``SSL_CERT_DIR`` (system CAs kept)."""
    env = engines.apptainer_env(BuildOptions(docker_cert_dir="certs"), {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "SSL_CERT_DIR": f"{Path.cwd() / 'certs'}:/etc/ssl/certs"}
    env = engines.apptainer_env(BuildOptions(docker_cert_dir=str(tmp_path)),
                                {"SSL_CERT_DIR": "/site/certs"})
    assert env["SSL_CERT_DIR"] == f"{tmp_path}:/site/certs"
    assert engines.apptainer_env(BuildOptions(), {"A": "1"}) == {"A": "1"}


def test_uri_specs(tmp_path: Path) -> None:
    assert definition_text("docker://debian:12") == (
        "docker://debian:12",
        "Bootstrap: docker\nFrom: debian:12\n",
    )
    with pytest.raises(UserError, match="library:// images are not supported"):
        definition_text("library://alpine")
    with pytest.raises(UserError, match="no such definition file"):
        definition_text(str(tmp_path / "missing.def"))


def test_cache_fill_lookup_prune(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    key = key_of({"a": 1})
    assert key == key_of({"a": 1}) and key != key_of({"a": 2})
    assert cache.lookup("debootstrap", key) is None
    path = cache.fill(
        "debootstrap",
        key,
        "debootstrap bookworm",
        lambda tmp: (tmp / "rootfs.tar").write_bytes(b"x" * 10),
    )
    assert cache.lookup("debootstrap", key) == path
    [entry] = list(cache.entries())
    assert entry.source == "debootstrap bookworm" and entry.size > 10
    assert [e.key for e in cache.prune(older_than_days=1)] == []
    assert [e.key for e in cache.prune()] == [key]
    assert cache.lookup("debootstrap", key) is None


def test_failed_fill_leaves_no_entry(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)

    def boom(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.fill("oci", "k", "src", boom)
    assert cache.lookup("oci", "k") is None
    assert list((tmp_path / "build" / "oci").iterdir()) == []


def test_subid_ranges(tmp_path: Path) -> None:
    f = tmp_path / "subuid"
    f.write_text("alice:100000:65536\n1001:300000:10\nbob:200000:65536\nbad line\n")
    assert fakeroot._subid_count(f, "alice", 1000) == 65536
    assert fakeroot._subid_count(f, "carol", 1001) == 10
    assert fakeroot._subid_count(f, "dave", 1002) == 0
    assert fakeroot._subid_count(tmp_path / "none", "alice", 1) == 0


def test_namespace_command_line() -> None:
    argv = fakeroot.namespace_argv(["true"])
    assert argv[0] == "unshare" and argv[-2:] == ["--", "true"]
    assert {"--mount", "--pid", "--fork", "--kill-child"} <= set(argv)


def test_mmdebstrap_writes_the_tree_in_place_as_fake_root() -> None:
    argv = agents.mmdebstrap_argv("bookworm", Path("/c/rootfs"), ["deb http://m bookworm main"],
                                  "amd64", ["hello", "gcc"], quiet=True)
    assert argv[:2] == ["mmdebstrap", "--mode=root"] and "--format=directory" in argv
    assert argv[-3:] == ["bookworm", "/c/rootfs", "deb http://m bookworm main"]
    assert "--include=hello,gcc" in argv and "--quiet" in argv
    # what is set up for the bootstrap only is taken down again before it is cached
    assert ('--customize-hook=rm -f "$1/etc/apt/apt.conf.d/99mmdebstrap" '
            '"$1/etc/resolv.conf"') in argv
    assert '--customize-hook=umount --lazy "$1/sys"' in argv


def test_mmdebstrap_installs_what_apptainers_debootstrap_does() -> None:
    """Issue 12 point 7: debootstrap's minbase less Apptainer's excludes, merged /usr by
    symlinks (no usrmerge and perl).  Checked with apt's own pattern parser on this host:
    the pattern selects packages and none of the excluded ones."""
    argv = agents.mmdebstrap_argv("bookworm", Path("/r"), [], "amd64", [], quiet=False)
    assert "--variant=apt" in argv
    assert f"--include={agents.REQUIRED}" in argv
    if agents.MERGED_USR_HOOK.is_dir():
        assert f"--hook-dir={agents.MERGED_USR_HOOK}" in argv
    if not Path("/usr/bin/apt-get").exists():
        pytest.skip("needs apt-get")
    sim = subprocess.run(["apt-get", "install", "--simulate", "--reinstall", agents.REQUIRED],
                         capture_output=True, text=True, check=False)
    assert sim.returncode == 0, sim.stderr
    assert re.search(r"^Inst (dash|bash|coreutils) ", sim.stdout, re.M), sim.stdout[-500:]
    assert not re.search(r"^Inst (e2fsprogs|udev|openssl|debconf-i18n) ", sim.stdout, re.M)


LAYERED = parse("""Bootstrap: localimage
From: base.sif

%environment
    export LAYER=second

%help
    Layer help.
""", "x.def").final


def base_root(tmp_path: Path) -> Path:
    """A root as a base image leaves it: its own environment, help and definition."""
    root = tmp_path / "root"
    inside.write_files(str(root), layout.base_environment(fresh=False))
    sd = root / layout.SD
    (sd / "env/90-environment.sh").write_text("#!/bin/sh\nexport BASE=first\n")
    (sd / "runscript.help").write_text("Base help.\n")
    (sd / "Singularity").write_text("BASE DEF")
    return root


def layer(root: Path, *, force: bool = False) -> None:
    files = layout.final_files(LAYERED, deffile_text="NEW DEF", label_map={}, force=force)
    inside.keep_history(str(root))
    inside.write_files(str(root), files)


def test_environment_is_appended_to_the_base_images(tmp_path: Path) -> None:
    """Issue 12 (parity): Apptainer appends %environment; the base's variables stay."""
    root = base_root(tmp_path)
    layer(root)
    env = root / layout.SD / "env/90-environment.sh"
    assert env.read_text() == "#!/bin/sh\nexport BASE=first\n\n    export LAYER=second\n"
    assert env.stat().st_mode & 0o777 == 0o755


def test_fresh_root_gets_the_default_environment_then_the_definitions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    inside.write_files(str(root), layout.base_environment())
    inside.write_files(str(root), layout.final_files(LAYERED, deffile_text="D", label_map={}))
    text = (root / layout.SD / "env/90-environment.sh").read_text()
    assert text.startswith("#!/bin/sh\n") and text.endswith("\n    export LAYER=second\n")
    assert text.count("export LAYER") == 1


def test_base_images_help_is_kept_unless_force(tmp_path: Path) -> None:
    """Issue 12 (parity): Apptainer writes %help only where the image has none, or
    with --force."""
    root = base_root(tmp_path)
    layer(root)
    assert (root / layout.SD / "runscript.help").read_text() == "Base help.\n"
    layer(root, force=True)
    assert (root / layout.SD / "runscript.help").read_text() == "    Layer help.\n"
    (root / layout.SD / "runscript.help").unlink()
    layer(root)
    assert (root / layout.SD / "runscript.help").read_text() == "    Layer help.\n"


def test_base_definition_goes_to_bootstrap_history(tmp_path: Path) -> None:
    """Issue 12 (parity): each layer's definition moves to bootstrap_history/ApptainerN."""
    root = base_root(tmp_path)
    layer(root)
    history = root / layout.HISTORY
    assert sorted(p.name for p in history.iterdir()) == ["Apptainer0"]
    assert (history / "Apptainer0").read_text() == "BASE DEF"
    assert history.stat().st_mode & 0o777 == 0o755
    layer(root)
    assert sorted(p.name for p in history.iterdir()) == ["Apptainer0", "Apptainer1"]
    assert (history / "Apptainer1").read_text() == "NEW DEF"
    assert (root / layout.SD / "Singularity").read_text() == "NEW DEF"


def test_fresh_root_has_no_bootstrap_history(tmp_path: Path) -> None:
    root = tmp_path / "root"
    inside.write_files(str(root), layout.base_environment())
    inside.keep_history(str(root))
    assert not (root / layout.HISTORY).exists()


def test_files_copied_into_the_image_under_apptainers_umask(tmp_path: Path) -> None:
    """Issue 12 (parity): Apptainer builds under umask 002, so what %files and %post
    create is group-writable (91-environment.sh is 0664 in its images)."""
    src = tmp_path / "src.txt"
    src.write_text("x")
    src.chmod(0o664)
    root = tmp_path / "root"
    root.mkdir()
    inside.copy_into([str(src)], str(root), "/opt/dst.txt", follow=True)
    assert (root / "opt/dst.txt").stat().st_mode & 0o777 == 0o664
