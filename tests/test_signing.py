"""SIF signatures: ``hpcstack sign``/``verify``, with Apptainer 1.4 as the judge both ways.

Real components throughout: images assembled by ``hpcstack.build.pack`` with
siftool and mksquashfs (or built by ``hpcstack build``), keys made by Sequoia-PGP
and by ``apptainer key newpair``, the real Apptainer as the test user, the
U2CB service as its own account, and ``hpcstack modules deploy``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pysequoia
import pytest

from conftest import HPCSTACK_PREFIX, User, _ensure_user, need
from hpcstack.build import pack
from hpcstack.errors import UserError
from hpcstack.runtime.sif import read_sif
from hpcstack.signing import integrity, sign_image, verify_image
from hpcstack.signing.pgp import load_keyring, load_signing_key
from test_build import registry  # noqa: F401  (the fixture)
from test_service import munge  # noqa: F401  (the fixture)

SCRATCH_DEF = """Bootstrap: scratch

%setup
    mkdir -p "$APPTAINER_ROOTFS/usr/bin"
    printf '#!/bin/sh\\necho hello\\n' > "$APPTAINER_ROOTFS/usr/bin/hello"
    chmod 755 "$APPTAINER_ROOTFS/usr/bin/hello"

%labels
    Maintainer signing test
"""


# --- helpers ---------------------------------------------------------------------------


def tiny_sif(dest: Path, owner: User | None = None) -> Path:
    """A small SIF assembled as hpcstack assembles every image (pack.assemble, siftool)."""
    need("siftool", "mksquashfs")
    work = dest.parent / f".{dest.name}.parts"
    (work / "root" / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    hello = work / "root" / "usr" / "bin" / "hello"
    hello.write_text("#!/bin/sh\necho hello\n")
    hello.chmod(0o755)
    subprocess.run(["mksquashfs", work / "root", work / "fs.sqfs", "-quiet", "-noappend",
                    "-no-progress"], check=True)
    (work / "def").write_text("Bootstrap: scratch\n")
    (work / "labels.json").write_text('{"Maintainer": "signing test"}')
    dest.unlink(missing_ok=True)
    pack.assemble(dest, work / "def", work / "labels.json", work / "fs.sqfs", "amd64",
                  lambda argv: subprocess.run(argv, check=True, capture_output=True))
    if owner is not None:
        os.chown(dest, owner.uid, owner.gid)
    return dest


def make_key(directory: Path, name: str, suite=None, owner: User | None = None
             ) -> tuple[Path, Path, str]:
    """An armored secret key file and its public key file; and the fingerprint."""
    directory.mkdir(parents=True, exist_ok=True)
    tsk = pysequoia.Tsk.generate(f"{name} <{name}@example.org>", cipher_suite=suite)
    secret, public = directory / f"{name}.sec", directory / f"{name}.pub"
    secret.write_text(str(tsk))
    public.write_text(str(tsk.extract_certificate()))
    if owner is not None:
        for p in (directory, secret, public):
            os.chown(p, owner.uid, owner.gid)
    return secret, public, tsk.extract_certificate().fingerprint.upper()


def flip_byte(sif: Path, where: str = "partition") -> None:
    """Change one byte of the SquashFS (or of the definition file) in place."""
    img = read_sif(sif)
    d = img.primary_partition() if where == "partition" else img.descriptors[0]
    with sif.open("r+b") as f:
        f.seek(d.offset + d.size // 2)
        b = f.read(1)
        f.seek(d.offset + d.size // 2)
        f.write(bytes([b[0] ^ 0xFF]))


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- the format, against sylabs/sif's rules ----------------------------------------------


@pytest.mark.parametrize("suite", [pysequoia.CipherSuite.RSA2k, pysequoia.CipherSuite.Cv25519])
def test_sign_then_verify_rsa_and_eddsa(tmp_path: Path, suite) -> None:
    sif = tiny_sif(tmp_path / "t.sif")
    secret, public, fp = make_key(tmp_path / "keys", "site", suite)
    result = sign_image(sif, load_signing_key(secret))
    assert result.fingerprint == fp and result.signatures == [4]
    checked = verify_image(sif, load_keyring([public]))
    assert [(g.group, g.objects, g.fingerprint) for g in checked.groups] == [(1, [1, 2, 3], fp)]


def test_signature_object_is_what_apptainer_writes(tmp_path: Path) -> None:
    """No group, linked to group 1, hash type and the primary key's fingerprint in extra."""
    sif = tiny_sif(tmp_path / "t.sif")
    secret, _public, fp = make_key(tmp_path / "keys", "site")
    before = read_sif(sif)
    sign_image(sif, load_signing_key(secret))
    img = read_sif(sif)
    sig = img.descriptors[-1]
    assert (sig.id, sig.group, sig.link) == (4, 0, 1)
    raw_group, raw_link = struct.unpack_from("<II", sig.raw, 9)
    assert (raw_group, raw_link) == (0xF0000000, 0xF0000001)  # "no group", "a group link"
    assert [s.fingerprint for s in integrity.signatures(img)] == [fp]
    assert integrity.signatures(img)[0].hash_type in integrity.HASH_TYPES.values()
    assert sig.offset == max(d.offset + d.size for d in before.descriptors)
    assert sif.stat().st_size == sig.offset + sig.size
    text = img.read(sig).decode()
    assert text.startswith("-----BEGIN PGP SIGNED MESSAGE-----\nHash: ")
    body = json.loads(text.split("\n\n", 1)[1].split("\n-----BEGIN PGP SIGNATURE", 1)[0])
    assert body["version"] == 1 and [o["relativeId"] for o in body["objects"]] == [0, 1, 2]
    assert body["header"]["digest"].startswith("sha256:")
    # The objects the signature covers are unchanged by adding it.
    assert [d.raw for d in img.descriptors[:3]] == [d.raw for d in before.descriptors]


@pytest.mark.parametrize("where", ["partition", "deffile"])
def test_a_flipped_byte_is_named(tmp_path: Path, where: str) -> None:
    sif = tiny_sif(tmp_path / "t.sif")
    secret, public, _fp = make_key(tmp_path / "keys", "site")
    sign_image(sif, load_signing_key(secret))
    flip_byte(sif, where)
    with pytest.raises(UserError, match=r"object \d .* data does not match the signature"):
        verify_image(sif, load_keyring([public]))


def test_unknown_key_unsigned_and_groupless_images(tmp_path: Path) -> None:
    sif = tiny_sif(tmp_path / "t.sif")
    secret, _public, fp = make_key(tmp_path / "keys", "site")
    _s, other, _f = make_key(tmp_path / "keys", "other")
    with pytest.raises(UserError, match="not signed"):
        verify_image(sif, load_keyring([other]))
    sign_image(sif, load_signing_key(secret))
    with pytest.raises(UserError, match=f"signed by {fp}, which is not a trusted key"):
        verify_image(sif, load_keyring([other]))
    old = tmp_path / "old.sif"  # assembled as hpcstack did before: objects in no group
    subprocess.run(["siftool", "new", old], check=True)
    subprocess.run(["siftool", "add", "--datatype", "1", old, tmp_path / "keys" / "site.pub"],
                   check=True)
    with pytest.raises(UserError, match="in no object group"):
        sign_image(old, load_signing_key(secret))


def test_a_keyring_directory_and_a_key_file_with_several_keys(tmp_path: Path) -> None:
    sif = tiny_sif(tmp_path / "t.sif")
    secret, _public, fp = make_key(tmp_path / "keys", "site")
    other, _p, _other_fp = make_key(tmp_path / "keys", "other")
    both = tmp_path / "both.sec"
    both.write_text(secret.read_text() + other.read_text())
    with pytest.raises(UserError, match=r"holds 2 secret keys.*--fingerprint"):
        load_signing_key(both)
    sign_image(sif, load_signing_key(both, fp[-16:]))
    assert verify_image(sif, load_keyring([tmp_path / "keys"])).groups[0].fingerprint == fp


# --- the CLI, as the ordinary user -----------------------------------------------------------


@pytest.fixture(scope="module")
def cli_work(user: User) -> Path:
    work = user.workdir("signing-cli")
    tiny_sif(work / "t.sif", user)
    make_key(work / "keys", "site", owner=user)
    make_key(work / "other", "other", owner=user)
    return work


def test_cli_sign_verify_and_one_line_errors(user: User, cli_work: Path) -> None:
    w = cli_work
    user.hpcstack("sign", "--key", str(w / "keys/site.sec"), str(w / "t.sif"), check=True)
    out = user.hpcstack("verify", "--keyring", str(w / "keys/site.pub"), "--json",
                        str(w / "t.sif"), check=True).stdout
    assert json.loads(out)["groups"][0]["objects"] == [1, 2, 3]
    err = one_line_error(user.hpcstack("verify", "--keyring", str(w / "other"), str(w / "t.sif")))
    assert "not a trusted key" in err
    err = one_line_error(user.hpcstack("verify", str(w / "t.sif"),  # no Apptainer keyring
                                       env={"APPTAINER_KEYSDIR": str(w / "none")}))
    assert f"{w}/none/pgp-public: no such keyring" in err
    err = one_line_error(user.hpcstack("sign", "--key", str(w / "t.sif"), str(w / "t.sif")))
    assert err.endswith("t.sif: holds no OpenPGP secret key"), err
    user.run(["cp", str(w / "t.sif"), str(w / "bad.sif")], check=True)
    flip_byte(w / "bad.sif")
    err = one_line_error(user.hpcstack("verify", "--keyring", str(w / "keys"),
                                       str(w / "bad.sif")))
    assert "object 3 (partition): its data does not match the signature" in err


# --- Apptainer as the judge ----------------------------------------------------------------


@pytest.fixture(scope="module")
def appt_work(user: User, apptainer) -> Path:
    """A fresh Apptainer keyring for the user, and an image built by ``hpcstack build``."""
    need("siftool", "mksquashfs", "unshare")
    user.run(["rm", "-rf", str(user.home / ".apptainer" / "keys")], check=True)
    work = user.workdir("signing-apptainer")
    (work / "scratch.def").write_text(SCRATCH_DEF)
    os.chown(work / "scratch.def", user.uid, user.gid)
    user.hpcstack("build", "-q", "-F", "built.sif", "scratch.def", cwd=work, check=True)
    return work


def test_apptainer_signs_and_verifies_an_image_hpcstack_built(user: User, apptainer,
                                                              appt_work: Path) -> None:
    """Issue 12 point 1: `integrity: no groups found` before objects joined group 1."""
    w = appt_work
    apptainer.run(user, ["key", "newpair", "--password=", "--name=Apptainer Tester",
                         "--email=appt@example.org", "--comment=test", "--bit-length=2048",
                         "--push=false"], check=True)
    user.run(["cp", str(w / "built.sif"), str(w / "by-apptainer.sif")], check=True)
    apptainer.run(user, ["sign", "by-apptainer.sif"], cwd=w, check=True)
    apptainer.run(user, ["verify", "by-apptainer.sif"], cwd=w, check=True)
    # hpcstack verify accepts Apptainer's signature, with Apptainer's keyring by default.
    out = user.hpcstack("verify", "--json", "by-apptainer.sif", cwd=w, check=True).stdout
    assert json.loads(out)["groups"][0]["user"] == "Apptainer Tester (test) <appt@example.org>"
    # and the key file Apptainer made signs through hpcstack too.
    user.run(["cp", str(w / "built.sif"), str(w / "with-appt-key.sif")], check=True)
    user.hpcstack("sign", "with-appt-key.sif", cwd=w, check=True)
    apptainer.run(user, ["verify", "with-appt-key.sif"], cwd=w, check=True)
    user.run(["cp", str(w / "by-apptainer.sif"), str(w / "tampered.sif")], check=True)
    flip_byte(w / "tampered.sif")
    assert apptainer.run(user, ["verify", "tampered.sif"], cwd=w).returncode != 0
    err = one_line_error(user.hpcstack("verify", "tampered.sif", cwd=w))
    assert "does not match the signature" in err


def test_apptainer_verifies_hpcstack_signatures(user: User, apptainer, appt_work: Path) -> None:
    w = appt_work
    _secret, public, fp = make_key(w / "site", "site", owner=user)
    user.run(["cp", str(w / "built.sif"), str(w / "by-hpcstack.sif")], check=True)
    user.hpcstack("sign", "--key", str(w / "site/site.sec"), "by-hpcstack.sif", cwd=w,
                  check=True)
    # Before the key is imported Apptainer refuses; after, it verifies every object.
    assert apptainer.run(user, ["verify", "by-hpcstack.sif"], cwd=w).returncode != 0
    apptainer.run(user, ["key", "import", str(public)], check=True)
    proc = apptainer.run(user, ["verify", "by-hpcstack.sif"], cwd=w, check=True)
    assert fp in proc.stdout + proc.stderr
    flip_byte(w / "by-hpcstack.sif")
    assert apptainer.run(user, ["verify", "by-hpcstack.sif"], cwd=w).returncode != 0


def test_passphrase_protected_apptainer_key(user: User, apptainer, appt_work: Path) -> None:
    w = appt_work
    keys = w / "locked-keys"
    apptainer.run(user, ["key", "newpair", f"--keysdir={keys}", "--password=s3cret",
                         "--name=Locked", "--email=locked@example.org", "--comment=x",
                         "--bit-length=2048", "--push=false"], check=True)
    user.run(["cp", str(w / "built.sif"), str(w / "locked.sif")], check=True)
    err = one_line_error(user.hpcstack("sign", "--key", str(keys / "pgp-secret"),
                                       "locked.sif", cwd=w))
    assert "protected by a passphrase: set HPCSTACK_SIGN_PASSPHRASE" in err
    err = one_line_error(user.hpcstack("sign", "--key", str(keys / "pgp-secret"), "locked.sif",
                                       cwd=w, env={"HPCSTACK_SIGN_PASSPHRASE": "wrong"}))
    assert "wrong passphrase" in err
    user.hpcstack("sign", "--key", str(keys / "pgp-secret"), "locked.sif", cwd=w,
                  env={"HPCSTACK_SIGN_PASSPHRASE": "s3cret"}, check=True)
    user.hpcstack("verify", "--keyring", str(keys / "pgp-public"), "locked.sif", cwd=w,
                  check=True)


# --- modules deploy with require_signature ---------------------------------------------------


def test_deploy_refuses_unsigned_and_tampered_images(user: User, cli_work: Path) -> None:
    need("unsquashfs")
    w = user.workdir("signing-modules")
    secret, public, _fp = make_key(w / "keys", "site", owner=user)
    for name in ("signed", "unsigned", "tampered"):
        tiny_sif(w / f"{name}.sif", user)
    for name in ("signed", "tampered"):
        user.hpcstack("sign", "--key", str(secret), f"{name}.sif", cwd=w, check=True)
    flip_byte(w / "tampered.sif")

    def site(image: str) -> Path:
        path = w / f"site-{image}.yaml"
        path.write_text(f"root: {w}/modules-{image}\nrequire_signature: true\n"
                        f"trusted_keys: [keys/site.pub]\n"
                        f"apps:\n  - {{name: hello, version: '1', image: {image}.sif, "
                        f"commands: [hello]}}\n")
        os.chown(path, user.uid, user.gid)
        return path

    err = one_line_error(user.hpcstack("modules", "deploy", "-c", str(site("unsigned"))))
    assert err.endswith("unsigned.sif: not signed (no signature for object group 1); "
                        "nothing was deployed"), err
    assert "hello/1" in err and not (w / "modules-unsigned").exists()
    err = one_line_error(user.hpcstack("modules", "deploy", "-c", str(site("tampered"))))
    assert "hello/1" in err and "data does not match the signature" in err
    assert not (w / "modules-tampered").exists()
    user.hpcstack("modules", "deploy", "-c", str(site("signed")), check=True)
    assert (w / "modules-signed").is_dir()
    user.hpcstack("modules", "check", "--no-load", "-c", str(site("signed")), check=True)
    # The site stops trusting the key that signed it: check names the module, deploy refuses.
    make_key(w / "keys", "site", owner=user)  # a new key pair in place of the old one
    proc = user.hpcstack("modules", "check", "--no-load", "-c", str(site("signed")))
    assert proc.returncode == 1 and proc.stdout.startswith("hello/1: "), proc.stdout
    assert "signed.sif" in proc.stdout and "trusted" in proc.stdout, proc.stdout
    # require_signature without keys is a site-file error naming the field.
    bad = w / "site-nokeys.yaml"
    bad.write_text("require_signature: true\n")
    os.chown(bad, user.uid, user.gid)
    err = one_line_error(user.hpcstack("modules", "deploy", "-c", str(bad)))
    assert "site-nokeys.yaml: trusted_keys: " in err
    assert public.exists()


# --- U2CB signs what it builds ---------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_service(munge, registry):  # noqa: F811
    """A service with a site key only its own account can read (and a passphrase in its
    environment, which builds must not inherit)."""
    from test_service import Service, data_dir, registry_args

    account = _ensure_user("u2cb")
    keys = account.home / "site-keys"
    account.run(["rm", "-rf", str(keys)], check=True)
    account.run(["mkdir", "-m", "700", str(keys)], check=True)
    tsk = pysequoia.Tsk.generate("U2CB site <u2cb@example.org>")
    secret = keys / "site.sec"
    secret.write_text(str(tsk))
    os.chown(secret, account.uid, account.gid)
    secret.chmod(0o600)
    public = Path(account.home.parent / "u2cb-site.pub")
    public.write_text(str(tsk.extract_certificate()))
    public.chmod(0o644)
    svc = Service(account, munge, data_dir(account, "signing"), "--sign-key", str(secret),
                  *registry_args(registry),
                  env={"HPCSTACK_SIGN_PASSPHRASE": "never-seen-by-builds"}).start()
    yield svc, secret, public, tsk.extract_certificate().fingerprint.upper()
    svc.stop()
    public.unlink(missing_ok=True)


def test_u2cb_signs_each_build_with_the_site_key(signing_service, user: User) -> None:
    from test_service import put

    svc, secret, public, fp = signing_service
    work = user.workdir("signing-u2cb")
    put(user, work / "t.def", f"""Bootstrap: scratch

%setup
    env > "$APPTAINER_ROOTFS/build-env.txt"
    if cat {secret} > /dev/null 2>&1; then echo visible; else echo hidden; fi \\
        > "$APPTAINER_ROOTFS/key.txt"
""")
    svc.u2cb(user, "defcreate", "-n", "signed", "-d", "t.def", cwd=work, check=True)
    # download saves ./signed.sif, checked against the sha256 the service recorded after signing
    svc.u2cb(user, "download", "-n", "signed", cwd=work, check=True)
    out = user.hpcstack("verify", "--keyring", str(public), "--json", "signed.sif", cwd=work,
                        check=True).stdout
    assert json.loads(out)["groups"][0]["fingerprint"] == fp
    listing = subprocess.run(["unsquashfs", "-cat", "-o", str(read_sif(
        work / "signed.sif").primary_partition().offset), str(work / "signed.sif"),
        "key.txt", "build-env.txt"], capture_output=True, text=True, check=True).stdout
    assert listing.startswith("hidden\n")  # the build never sees the key file
    assert "never-seen-by-builds" not in listing and "HPCSTACK_SIGN" not in listing


def test_u2cb_signs_a_sandbox_packed_for_download(signing_service, user: User,
                                                  registry) -> None:  # noqa: F811
    svc, _secret, public, fp = signing_service
    proc = svc.u2cb(user, "create", "-n", "sbox", "-b",
                    f"docker://{registry['host']}/debian:bookworm", timeout=600)
    assert proc.returncode == 0, proc.stderr
    work = user.workdir("signing-u2cb-sandbox")
    svc.u2cb(user, "download", "-n", "sbox", cwd=work, check=True, timeout=600)
    out = user.hpcstack("verify", "--keyring", str(public), "--json", "sbox.sif", cwd=work,
                        check=True).stdout
    assert json.loads(out)["groups"][0]["fingerprint"] == fp


def test_serve_refuses_a_bad_site_key(munge) -> None:  # noqa: F811
    from test_service import data_dir

    account = _ensure_user("u2cb")
    keys = account.home / "site-keys"
    account.run(["mkdir", "-p", str(keys)], check=True)
    bogus = keys / "bogus.sec"
    bogus.write_text("not a key\n")
    os.chown(bogus, account.uid, account.gid)
    proc = account.run([str(HPCSTACK_PREFIX / "bin" / "hpcstack"), "serve", "--port", "1",
                        "--data-dir", str(data_dir(account, "badkey")), "--munge-socket",
                        munge.socket, "--sign-key", str(bogus)])
    line = one_line_error(proc)
    assert line.startswith("hpcstack: error: cannot start the service: ") and "bogus.sec" in line
