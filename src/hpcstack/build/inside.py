"""The part of a build that runs as fake root inside the build namespace.

Started by the builder as ``unshare … python -m hpcstack.build.inside PLAN``.
It executes a :class:`~hpcstack.build.plan.Plan` stage by stage, in Apptainer's
order: bootstrap → ``%setup`` → ``%files`` → ``%post`` → environment, scripts
and labels → ``%test`` → SquashFS.  Everything it mounts lives in this private
mount namespace and disappears with it.  A problem the user can fix is written
as one line to the plan's error file and ends the process with status 1.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from hpcstack.build import layout
from hpcstack.build.jail import HOST_DEVICES, in_root, set_read_only
from hpcstack.build.jail import SAFE_PATH as BUILD_PATH
from hpcstack.build.pack import mksquashfs_flags
from hpcstack.build.plan import Plan, PlanError, Source
from hpcstack.deffile import Definition, Script, Stage
from hpcstack.deffile.model import DefFileError
from hpcstack.errors import UserError
from hpcstack.files import tree_size

ENV_FILE = "/.singularity.d/env/91-environment.sh"
LABELS_FILE = "/.build.labels"
# Apptainer builds under umask 002: what %setup, %files and %post create (such as
# $APPTAINER_ENVIRONMENT, 91-environment.sh) is group-writable, 0664, in both.
UMASK = 0o002


def log(message: str) -> None:
    print(f"INFO:    {message}", file=sys.stderr, flush=True)


def sh(argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=True, stdin=subprocess.DEVNULL, **kw)


def mount(*args: str) -> None:
    sh(["mount", *args])


# --- confinement and mounts ------------------------------------------------------------


def confine_host(workdir: str) -> bool:
    """Make every host filesystem read-only except the build's own directory.

    ``%setup`` runs outside the image (as in Apptainer) but here as fake root in
    this namespace: it can write only under the work directory, never to the
    user's files — whether ``/home``, ``/tmp`` or a scratch filesystem is a
    mount of its own or not.  Returns whether the read-only remount worked.
    """
    if not set_read_only("/", True, recursive=True):
        return False
    mount("--bind", workdir, workdir)
    os.chdir(workdir)  # the old cwd belongs to a now read-only mount
    return set_read_only(workdir, False, recursive=False)


@contextlib.contextmanager
def build_mounts(rootfs: str) -> Iterator[None]:
    """``/proc``, a private ``/dev/pts``, host device nodes, ``/sys``, resolver and hosts.

    No ``mknod`` in a user namespace, so device nodes are the host's, bound in.
    """
    mounted: list[str] = []

    def bind(src: str, dst: str, how: str = "--bind") -> None:
        if not os.path.lexists(dst):
            if os.path.isdir(src):
                os.makedirs(dst, exist_ok=True)
            else:
                Path(dst).touch()
        mount(how, src, dst)
        mounted.append(dst)

    try:
        dev = f"{rootfs}/dev"
        os.makedirs(dev, exist_ok=True)
        for name in HOST_DEVICES:
            if os.path.exists(f"/dev/{name}"):
                target = f"{dev}/{name}"
                if os.path.islink(target) or os.path.isdir(target):
                    continue
                bind(f"/dev/{name}", target)
        for sub in ("pts", "shm"):
            os.makedirs(f"{dev}/{sub}", exist_ok=True)
        mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts",
              f"{dev}/pts")
        mounted.append(f"{dev}/pts")
        if not os.path.lexists(f"{dev}/ptmx"):
            os.symlink("pts/ptmx", f"{dev}/ptmx")
        mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{dev}/shm")
        mounted.append(f"{dev}/shm")
        os.makedirs(f"{rootfs}/proc", exist_ok=True)
        mount("-t", "proc", "proc", f"{rootfs}/proc")
        mounted.append(f"{rootfs}/proc")
        os.makedirs(f"{rootfs}/sys", exist_ok=True)
        bind("/sys", f"{rootfs}/sys", how="--rbind")
        os.makedirs(f"{rootfs}/etc", exist_ok=True)
        for name in ("resolv.conf", "hosts"):
            target = in_root(rootfs, f"/etc/{name}")
            if os.path.exists(f"/etc/{name}") and not os.path.isdir(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                bind(f"/etc/{name}", target)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "--lazy", target],
                           capture_output=True, check=False)


# --- stage steps -----------------------------------------------------------------------


def unpack(source: Source, rootfs: str) -> None:
    """Unpack the stage's bootstrap source into the (empty) directory ``rootfs``."""
    os.makedirs(rootfs, exist_ok=True)
    match source.kind:
        case "oci":
            sh(["umoci", "--log", "error", "raw", "unpack",
                "--image", f"{source.path}:{source.ref}", rootfs],
               stdout=subprocess.DEVNULL)
        case "sif":
            os.rmdir(rootfs)
            sh(["unsquashfs", "-quiet", "-no-progress", "-o", str(source.offset),
                "-d", rootfs, source.path], stdout=subprocess.DEVNULL)
        case "dir":
            sh(["cp", "-a", "--", f"{source.path}/.", rootfs])
        case "empty":
            pass


def unpack_tree(source: Source) -> None:
    """Unpack a cached bootstrap into the cache once, as fake root so its IDs are right.

    Later builds mount it as the read-only lower layer of an overlay instead of
    unpacking again: a warm build starts in milliseconds.  (A debootstrap is
    written as a tree in the first place; OCI layers are unpacked here.)
    """
    if not source.tree or os.path.isdir(source.tree):
        return
    log("Unpacking the bootstrap into the cache")
    tmp = tempfile.mkdtemp(prefix=".rootfs-", dir=os.path.dirname(source.tree))
    try:
        unpack(source, tmp)
        with contextlib.suppress(OSError):  # another build got there first: use theirs
            os.rename(tmp, source.tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def populate(plan: Plan, index: int, rootfs: str, *, overlay: bool) -> None:
    """The stage's root: an overlay on the cached tree where possible, else unpacked."""
    source = plan.sources[index]
    if overlay and source.tree and os.path.isdir(source.tree):
        upper, work = f"{plan.stage_dir(index)}/upper", f"{plan.stage_dir(index)}/overlay-work"
        for path in (upper, work, rootfs):
            os.makedirs(path, exist_ok=True)
        # userxattr: whiteouts and opaque dirs as user.* xattrs, which a user namespace may
        # write; without it dpkg meets EXDEV renaming directories.
        opts = f"lowerdir={source.tree},upperdir={upper},workdir={work},userxattr"
        done = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, rootfs],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        log(f"overlay unavailable ({done.stderr.strip()}); unpacking instead")
    unpack(source, rootfs)


def write_files(rootfs: str, items: Sequence[layout.Item]) -> None:
    for item in items:
        path = os.path.join(rootfs, item.path)
        if isinstance(item, layout.Dir):
            if not os.path.lexists(path):  # a base image's own (or its symlink) is kept
                os.makedirs(path, mode=item.mode)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(item, layout.Default) and os.path.lexists(path):
            continue
        if isinstance(item, layout.Append) and os.path.isfile(path):
            with open(path, "a") as fh:
                fh.write(item.content)
            continue
        if os.path.lexists(path) and not os.path.isdir(path):
            os.unlink(path)
        if isinstance(item, layout.Link):
            os.symlink(item.target, path)
        else:
            with open(path, "w") as fh:
                fh.write(item.fresh if isinstance(item, layout.Append) else item.content)
            os.chmod(path, item.mode)


def keep_history(rootfs: str) -> None:
    """Move a base image's definition to ``bootstrap_history/ApptainerN``, as Apptainer
    does, before the new one is written: the image keeps how each layer was made."""
    old = os.path.join(rootfs, layout.SD, "Singularity")
    if not os.path.lexists(old):
        return
    history = os.path.join(rootfs, layout.HISTORY)
    if not os.path.isdir(history):
        os.mkdir(history, 0o755)
    os.rename(old, os.path.join(history, layout.history_name(len(os.listdir(history)))))


def image_labels(rootfs: str) -> dict[str, str]:
    """The labels a base image brought (its ``labels.json``), kept under the new ones."""
    try:
        data = json.loads(Path(rootfs, layout.SD, "labels.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def write_metadata(rootfs: str, target: str) -> None:
    """Apptainer's inspect-metadata JSON object of the finished image, for the SIF."""
    sd = Path(rootfs, layout.SD)
    names = [*layout.INSPECT_FILES.values(), "labels.json"]
    names += sorted(str(p.relative_to(sd)) for pattern in layout.INSPECT_ENV
                    for p in sd.glob(f"env/{pattern}"))
    files = {}
    for name in names:
        path = sd / name
        if path.is_file():
            files[name] = path.read_text(errors="replace")
    Path(target).write_text(layout.go_json(layout.inspect_metadata(files)))


def make_mount_points(rootfs: str) -> None:
    for d in layout.MOUNT_DIRS:
        path = in_root(rootfs, "/" + d)
        if not os.path.lexists(path):
            os.makedirs(path, exist_ok=True)
    for f in layout.MOUNT_FILES:
        path = in_root(rootfs, "/" + f)
        if not os.path.lexists(path):
            Path(path).touch()


def section_failed(plan: Plan, name: str, script: Script, status: int) -> UserError:
    return DefFileError(plan.deffile, script.line, f"%{name} failed with exit status {status}")


def run_setup(plan: Plan, stage: Stage, rootfs: str, confined: bool) -> None:
    """``%setup``: on the host side of the image, as fake root, host read-only."""
    script = stage.setup
    if script is None:
        return
    if not confined:
        raise DefFileError(plan.deffile, script.line, "%setup refused: the host "
                           "filesystem could not be made read-only for it")
    log("Running setup scriptlet")
    path = os.path.join(plan.workdir, "setup.script")
    Path(path).write_text(script.body)
    env = {"PATH": BUILD_PATH, "HOME": "/root", "LANG": "C",
           "APPTAINER_ROOTFS": rootfs, "SINGULARITY_ROOTFS": rootfs,
           "APPTAINER_ENVIRONMENT": rootfs + ENV_FILE,
           "SINGULARITY_ENVIRONMENT": rootfs + ENV_FILE}
    status = subprocess.run(list(script.argv(path)), env=env, cwd=plan.workdir,
                            stdin=subprocess.DEVNULL, check=False, umask=UMASK).returncode
    if status:
        raise section_failed(plan, "setup", script, status)


def copy_into(srcs: Sequence[str], rootfs: str, dst: str, *, follow: bool) -> None:
    """``cp`` sources to ``dst`` inside the image, creating its parent like Apptainer."""
    target = in_root(rootfs, dst)
    parent = target if dst.endswith("/") else os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    flags = ["-fLr"] if follow else ["-fa"]
    sh(["cp", *flags, "--", *srcs, target], umask=UMASK)


def copy_host_files(plan: Plan, index: int, rootfs: str) -> None:
    for copy in plan.host_files[index]:
        log(f"Copying {' '.join(copy.sources)} to {copy.dst}")
        copy_into(copy.sources, rootfs, copy.dst, follow=True)


def copy_stage_files(plan: Plan, defn: Definition, stage: Stage, rootfs: str) -> None:
    """``%files from STAGE``: paths resolved inside that stage's root, symlinks kept."""
    names = [s.name for s in defn.stages]
    for section in stage.files:
        if section.stage is None:
            continue
        src_root = plan.rootfs(names.index(section.stage))
        for transfer in section.transfers:
            matches = sorted(glob.glob(in_root(src_root, transfer.src)))
            if not matches:
                raise DefFileError(plan.deffile, transfer.line, f"%files from "
                                   f"{section.stage}: {transfer.src}: no such file in that stage")
            log(f"Copying {transfer.src} from stage {section.stage} to {transfer.dst}")
            copy_into(matches, rootfs, transfer.dst, follow=False)


def chroot_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": BUILD_PATH, "HOME": "/root", "LANG": "C", "TERM": "dumb",
           "DEBIAN_FRONTEND": "noninteractive"}
    env.update(extra or {})
    return env


def run_post(plan: Plan, stage: Stage, rootfs: str) -> dict[str, str]:
    """``%post`` inside the image; returns labels it appended to ``$APPTAINER_LABELS``."""
    script = stage.post
    if script is None:
        return {}
    log("Running post scriptlet")
    path = "/.post.script"
    Path(rootfs + path).write_text(script.body)
    labels_path = rootfs + LABELS_FILE
    env = chroot_env({"APPTAINER_ENVIRONMENT": ENV_FILE, "SINGULARITY_ENVIRONMENT": ENV_FILE,
                      "APPTAINER_LABELS": LABELS_FILE, "SINGULARITY_LABELS": LABELS_FILE})
    try:
        status = subprocess.run(["chroot", rootfs, *list(script.argv(path))], env=env,
                                cwd="/", stdin=subprocess.DEVNULL, check=False,
                                umask=UMASK).returncode
    finally:
        os.unlink(rootfs + path)
    if status:
        raise section_failed(plan, "post", script, status)
    if not os.path.exists(labels_path):
        return {}
    labels = layout.parse_label_lines(Path(labels_path).read_text())
    os.unlink(labels_path)
    return labels


def run_test(plan: Plan, stage: Stage, rootfs: str) -> None:
    if stage.test is None or not plan.run_test:
        return
    log("Running testscript")
    status = subprocess.run(["chroot", rootfs, "/.singularity.d/actions/test"],
                            env=chroot_env(), cwd="/", stdin=subprocess.DEVNULL,
                            check=False, umask=UMASK).returncode
    if status:
        raise section_failed(plan, "test", stage.test, status)


def build_stage(plan: Plan, defn: Definition, index: int, confined: bool) -> None:
    stage, source = defn.stages[index], plan.sources[index]
    rootfs = plan.rootfs(index)
    label = f" {stage.name}" if stage.name else ""
    log(f"Stage {index + 1}/{len(defn.stages)}{label}: bootstrap {stage.bootstrap}")
    final = index == len(defn.stages) - 1
    populate(plan, index, rootfs, overlay=not (final and plan.sandbox))
    make_mount_points(rootfs)
    write_files(rootfs, layout.base_environment(source.env or None,
                                                fresh=stage.bootstrap != "localimage"))
    run_setup(plan, stage, rootfs, confined)
    copy_host_files(plan, index, rootfs)
    copy_stage_files(plan, defn, stage, rootfs)
    with build_mounts(rootfs):
        post_labels = run_post(plan, stage, rootfs)
        label_map = layout.labels(stage, arch=plan.arch, build_date=plan.build_date,
                                  extra=post_labels, existing=image_labels(rootfs))
        files = layout.final_files(stage, deffile_text=plan.text, label_map=label_map,
                                   force=plan.force)
        if stage.runscript is None and source.runscript:
            files.append(layout.File(f"{layout.SD}/runscript", source.runscript, 0o755))
        keep_history(rootfs)
        write_files(rootfs, files)
        if final:
            run_test(plan, stage, rootfs)
            write_metadata(rootfs, plan.metadata_file)
    log(f"stage {stage.name or index + 1}: {tree_size(Path(rootfs)) / 2**20:.1f} MiB")


def pack(plan: Plan, rootfs: str) -> None:
    """SquashFS made here, as fake root, so files owned by root stay uid 0."""
    log(f"Creating SquashFS ({plan.compression})")
    sh(["mksquashfs", rootfs, plan.squashfs, "-noappend", *mksquashfs_flags(plan.compression),
        "-no-progress", "-quiet"], stdout=subprocess.DEVNULL)


def execute(plan: Plan) -> None:
    defn = plan.definition
    for source in plan.sources:  # before the host turns read-only
        unpack_tree(source)
    confined = confine_host(plan.workdir)
    for index in range(len(defn.stages)):
        build_stage(plan, defn, index, confined)
    if not plan.sandbox:
        pack(plan, plan.rootfs(len(defn.stages) - 1))


def main(argv: list[str]) -> int:
    plan = Plan.model_validate_json(Path(argv[0]).read_text())
    try:
        execute(plan)
    except UserError as err:
        Path(plan.error_file).write_text(PlanError.of(err).model_dump_json())
        return 1
    except subprocess.CalledProcessError as err:
        cmd = " ".join(str(a) for a in err.cmd[:3])
        Path(plan.error_file).write_text(PlanError(
            message=f"{plan.deffile}: {cmd} failed with exit status {err.returncode}",
        ).model_dump_json())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
