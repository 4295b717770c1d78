"""Schemathesis against the served OpenAPI spec, every check (``--checks all``).

No 5xx, no response outside the spec, schema-valid requests accepted and invalid ones
refused, and a 405's ``Allow`` naming exactly the methods the spec lists.  The service
runs as its own account on a fresh data directory; the fuzzer authenticates with an
API token an admin issued over MUNGE.  ``schemathesis.toml`` beside this file holds the
one exception (defcreate's definition must also parse) and says why.  The number of
generated cases is printed (run with ``-s`` to see it) and must be non-zero.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import HPCSTACK_PREFIX, User
from test_service import Service, account, admin, data_dir, munge  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration
CHECKS = "all"


@pytest.fixture(scope="module")
def fuzzed(account: User, munge):  # noqa: F811
    svc = Service(account, munge, data_dir(account, "schema"), "--time-limit", "20",
                  "--max-upload", "100000").start()
    yield svc
    svc.stop()


def test_schemathesis_finds_no_5xx_and_no_spec_violation(fuzzed: Service, admin: User,  # noqa: F811
                                                          user: User) -> None:
    st = shutil.which("st") or str(HPCSTACK_PREFIX / "bin" / "st")
    cred = fuzzed.munge.credential(admin)
    r = httpx.post(f"{fuzzed.url}/api/v1/tokens", json={"user": user.name},
                   headers={"X-Munge-Credential": cred})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    config = user.workdir("schemathesis") / "schemathesis.toml"
    shutil.copyfile(Path(__file__).with_name("schemathesis.toml"), config)
    os.chown(config, user.uid, user.gid)
    proc = user.run([st, "--config-file", str(config), "run",
                     f"{fuzzed.url}/api/v1/openapi.json", "-H",
                     f"Authorization: Bearer {token}", "-c", CHECKS, "-n", "25",
                     "--generation-deterministic", "--no-color"], timeout=600)
    summary = proc.stdout[-12000:]
    cases = re.search(r"(\d+) generated", proc.stdout)
    print(f"\nschemathesis: {cases.group(0) if cases else '?'} test cases")
    assert cases and int(cases.group(1)) > 0, summary
    assert proc.returncode == 0, summary
