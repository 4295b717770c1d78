"""``GET /metrics``: scraped from the real service and read with prometheus_client's parser."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import User
from hpcstack.service import db
from hpcstack.service.metrics import Metrics
from hpcstack.service.models import State
from test_service import (  # noqa: F401  (fixtures)
    SCRATCH_DEF,
    Service,
    account,
    admin,
    data_dir,
    munge,
    other,
    put,
)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, as prometheus_client parses the text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_state_comes_from_the_database_and_users_are_a_bounded_set(tmp_path: Path) -> None:
    """200 users store from 0 to 1 TiB: still one fixed set of bucket series."""
    from prometheus_client import generate_latest

    database = db.Database(f"sqlite:///{tmp_path / 'u2cb.db'}")
    database.create_all()
    with database.session() as s:
        for uid in range(200):
            s.add(db.ContainerRow(uid=uid, owner=f"u{uid}", name="c", kind="def",
                                  source="x.def", state=State.READY.value, usage=uid * 2**32))
        s.add(db.ContainerRow(uid=0, owner="u0", name="q", kind="def", source="x.def",
                              state=State.QUEUED.value, usage=0))
    found = samples(generate_latest(Metrics(database, lambda: 3).registry).decode())
    assert value(found, "u2cb_builds", state="ready") == 200
    assert value(found, "u2cb_queue_length") == 1
    assert value(found, "u2cb_sessions_open") == 3
    buckets = {k: v for k, v in found.items() if k[0] == "u2cb_user_stored_bytes_bucket"}
    assert len(buckets) == 10  # 9 bounds and +Inf, however many users
    assert value(found, "u2cb_user_stored_bytes_bucket", le="+Inf") == 200
    assert value(found, "u2cb_user_stored_bytes_bucket", le="1.073741824e+09") == 1  # uid 0
    assert value(found, "u2cb_user_stored_bytes_bucket", le="1.7179869184e+10") == 5  # 0 to 16 GiB
    assert value(found, "u2cb_user_stored_bytes_count") == 200


@pytest.fixture(scope="module")
def served(account: User, munge):  # noqa: F811
    svc = Service(account, munge, data_dir(account, "metrics"), "--workers", "1").start()
    yield svc
    svc.stop()


def scrape(svc: Service) -> dict:
    response = httpx.get(f"{svc.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


def test_a_build_is_running_during_and_counted_after(served: Service, user: User) -> None:
    before = scrape(served)
    assert value(before, "u2cb_builds", state="running") == 0
    assert value(before, "u2cb_builds_ended_total", outcome="ready") == 0
    work = user.workdir("u2cb-metrics")
    put(user, work / "data.txt", "d\n")
    put(user, work / "t.def", SCRATCH_DEF.format(setup="sleep 4"))
    served.u2cb(user, "defcreate", "--detach", "-n", "timed", "-d", "t.def", cwd=work,
                check=True)
    deadline = time.monotonic() + 60
    while value(during := scrape(served), "u2cb_builds", state="running") != 1:
        assert time.monotonic() < deadline, "the build never showed as running"
        time.sleep(0.3)
    assert value(during, "u2cb_queue_wait_seconds_count") == 1
    assert value(during, "u2cb_build_duration_seconds_count", outcome="ready") == 0
    served.u2cb(user, "logs", "-n", "timed", "-f", check=True)  # returns when it has ended
    assert served.get(user, "/containers/timed").json()["state"] == "ready"
    deadline = time.monotonic() + 30
    while value(after := scrape(served), "u2cb_builds", state="ready") != 1:
        assert time.monotonic() < deadline, "the build never showed as ready"
        time.sleep(0.3)
    assert value(after, "u2cb_builds", state="running") == 0
    assert value(after, "u2cb_builds_ended_total", outcome="ready") == 1
    assert value(after, "u2cb_build_duration_seconds_count", outcome="ready") == 1
    assert value(after, "u2cb_build_duration_seconds_sum", outcome="ready") >= 4
    assert value(after, "u2cb_build_duration_seconds_bucket", outcome="ready", le="1.0") == 0
    assert value(after, "u2cb_user_stored_bytes_count") == 1
    assert value(after, "u2cb_user_stored_bytes_sum") > 0
    route = {"method": "POST", "route": "/api/v1/containers/def", "status": "202"}
    assert value(after, "u2cb_http_request_duration_seconds_count", **route) == 1
    routes = {dict(labels)["route"] for name, labels in after
              if name == "u2cb_http_request_duration_seconds_count"}
    assert "/api/v1/containers/{name}" in routes  # templates, never the names themselves
    assert not any("timed" in r for r in routes)
    served.u2cb(user, "delete", "-n", "timed", check=True)


def test_admins_restrict_who_reads_them(account: User, munge, user: User,  # noqa: F811
                                        other: User, admin: User) -> None:  # noqa: F811
    svc = Service(account, munge, data_dir(account, "metrics-readers"),
                  "--metrics-reader", other.name).start()
    try:
        url = f"{svc.url}/metrics"
        assert httpx.get(url).status_code == 401
        refused = httpx.get(url, headers={"X-Munge-Credential": munge.credential(user)})
        assert refused.status_code == 403
        assert refused.json()["detail"] == (f"{user.name} may not read the metrics "
                                            "(setting metrics_readers)")
        for reader in (other, admin):  # a named reader; an admin always
            got = httpx.get(url, headers={"X-Munge-Credential": munge.credential(reader)})
            assert got.status_code == 200
            assert ("u2cb_queue_length", ()) in samples(got.text)
    finally:
        svc.stop()


def test_node_checks_at_start_and_in_deep_health(account: User, munge) -> None:  # noqa: F811
    """The service runs ``hpcstack doctor``'s checks: broken here by naming a munged socket
    that does not exist (the service's own setting; the machine is left alone)."""
    svc = Service(account, munge, data_dir(account, "deep"), "--munge-socket",
                  "/nonexistent/munge.socket").start()
    try:
        shallow = httpx.get(f"{svc.url}/api/v1/health").json()
        assert shallow["status"] == "ok" and "checks" not in shallow
        deep = httpx.get(f"{svc.url}/api/v1/health", params={"deep": 1}, timeout=60).json()
        assert deep["status"] == "degraded"
        by_check = {c["check"]: c for c in deep["checks"]}
        assert by_check["munge"]["status"] == "fail"
        assert by_check["munge"]["message"].startswith(
            "munged does not answer at /nonexistent/munge.socket: ")
        assert by_check["munge"]["fix"] == "systemctl enable --now munge"
        assert by_check["subuid"]["status"] == "ok"  # the service account's own range
        assert by_check["subuid"]["message"].startswith(f"{account.name} has ")
        deadline = time.monotonic() + 30
        want = "WARNING: u2cb: node check: FAIL munge: munged does not answer at " \
               "/nonexistent/munge.socket: "
        while want not in svc.log.read_text():
            assert time.monotonic() < deadline, svc.log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        svc.stop()
