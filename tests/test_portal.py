"""The U2CB page end to end: the Passenger app as an ordinary user, a browser, a real service.

Real components: munged and ``hpcstack serve`` as its own account (test_service's
fixtures), the TLS registry with debian:bookworm (test_build's), the app written by
``hpcstack studio generate`` and started with ``node app.js`` as the test user, as
Open OnDemand's per-user NGINX would start it through Passenger (Passenger and OOD
themselves are not installed here: a loopback port stands in for the PUN's socket).
The browser is headless Chromium driven by Selenium; it is the user's client, not
hpcstack, and runs as the test process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import HPCSTACK_PREFIX, TEST_USER, User, _ensure_user, need
from test_build import registry  # noqa: F401  (the fixture)
from test_service import (  # noqa: F401  (fixtures)
    Service,
    account,
    data_dir,
    free_port,
    in_module_shell,
    munge,
    registry_args,
)

pytestmark = pytest.mark.integration
BASE_URI = "/pun/sys/u2cb"
LIMIT = 1 << 20  # the service's --max-upload in this module
SHOTS = os.environ.get("HPCSTACK_PORTAL_SCREENSHOTS")  # e.g. docs/: keep the screenshots


@pytest.fixture(scope="module")
def service(account: User, munge, registry):  # noqa: F811
    svc = Service(account, munge, data_dir(account, "portal"), *registry_args(registry),
                  "--workers", "2", "--per-user", "3", "--max-upload", str(LIMIT)).start()
    yield svc
    svc.stop()


class Portal:
    """The generated app's ``app.js`` under Node.js, as ``user``; its base URL."""

    def __init__(self, user: User, service: Service, registry) -> None:  # noqa: F811
        self.user = user
        work = user.workdir("portal-app")
        studio = work / "studio.yaml"
        studio.write_text(json.dumps({
            "cluster": "test", "partitions": ["debug"],
            "u2cb": {"server": service.url, "python": str(HPCSTACK_PREFIX / "bin" / "python"),
                     "bases": [{"label": "Debian 12 (the site's registry)",
                                "ref": f"docker://{registry['host']}/debian:bookworm"}]}}))
        os.chown(studio, user.uid, user.gid)
        user.hpcstack("studio", "generate", "-c", str(studio), str(work / "apps"), check=True)
        self.app = work / "apps" / "u2cb"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}{BASE_URI}"
        self.log = work / "portal.log"
        env = {"PORT": str(port), "PORTAL_BASE_URI": BASE_URI,
               "U2CB_MUNGE_SOCKET": service.munge.socket}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(user.argv(["node", str(self.app / "app.js")],
                                                   user.env(**env)),
                                         stdout=out, stderr=out, cwd=user.home)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/new", timeout=5).status_code == 200:
                    return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.3)
        raise AssertionError("the page did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        """SIGTERM to node itself (``runuser`` forks it); it stops the page's server."""
        pid = self.proc.pid
        if os.geteuid() != self.user.uid:
            kids = Path(f"/proc/{pid}/task/{pid}/children")
            with contextlib.suppress(OSError, IndexError, ValueError):
                pid = int(kids.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def portal(user: User, service: Service, registry):  # noqa: F811
    need("node", "chromium", "chromedriver")
    p = Portal(user, service, registry)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as Driver

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-sync", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Driver("/usr/bin/chromedriver"))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


# --- helpers ------------------------------------------------------------------------------


def wait(driver, condition, timeout: float = 60, what: str = ""):  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except Exception as exc:
        raise AssertionError(f"timed out waiting for {what or condition}; page:\n"
                             f"{driver.find_element('tag name', 'main').text[-3000:]}") from exc


def text_of(driver, css: str) -> str:  # type: ignore[no-untyped-def]
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css)


def shot(driver, name: str) -> None:  # type: ignore[no-untyped-def]
    if SHOTS:
        driver.save_screenshot(str(Path(SHOTS) / f"portal-{name}.png"))


def terminal_rows(driver) -> str:  # type: ignore[no-untyped-def]
    """What the terminal shows, one line per row (xterm.js's DOM rows)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.xterm-rows > div')]"
        ".map(r => r.textContent).join('\\n');")


def type_in_terminal(driver, keys: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea").send_keys(keys)


def service_log(service: Service, user: User, name: str) -> str:
    return service.get(user, f"/containers/{name}/log").json()["text"]


# --- the whole path, in one browser ---------------------------------------------------


def test_compose_build_terminal_download_delete(service: Service, portal: Portal, browser,
                                               user: User, registry) -> None:  # noqa: F811
    """Compose (a checker error shown at its line, fixed), build with the log live across a
    dropped WebSocket, a terminal (whoami, Ctrl-C, resize, exit 3), download, delete."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    d = browser
    d.get(f"{portal.url}/new")
    d.find_element(By.ID, "name").send_keys("tools")
    Select(d.find_element(By.ID, "base")).select_by_value(
        f"docker://{registry['host']}/debian:bookworm")
    # A package name with shell metacharacters: refused next to its field, nothing written.
    d.find_element(By.ID, "debs").send_keys("hello;touch${IFS}/tmp/owned")
    d.find_element(By.ID, "compose").send_keys(Keys.ENTER)
    wait(d, lambda d: "is not a Debian package name" in text_of(d, "#debs-error"),
         what="the package name refused")
    assert d.find_element(By.ID, "definition").get_attribute("value") == ""
    d.find_element(By.ID, "debs").clear()
    d.find_element(By.ID, "debs").send_keys("hello")
    d.find_element(By.ID, "compose").send_keys(Keys.ENTER)
    editor = d.find_element(By.ID, "definition")
    wait(d, lambda d: "apt-get install -y --no-install-recommends hello"
         in editor.get_attribute("value"), what="the composed definition")
    assert text_of(d, "#debs-error") == ""
    assert "No problems found." in text_of(d, "#check-summary")
    lines = editor.get_attribute("value").count("\n")
    # A bad line, typed: the checker's FILE:LINE error appears next to that line.
    editor.send_keys(Keys.CONTROL, Keys.END)
    editor.send_keys("%bogus section")
    bad = f"build.def:{lines + 1}: unknown section %bogus"
    wait(d, lambda d: bad in text_of(d, f"#listing li:nth-child({lines + 1}) .problem"),
         what="the checker's error at its line")
    shot(d, "new-build")
    # Building it anyway is refused by the page's server; no build starts.
    d.find_element(By.ID, "build").send_keys(Keys.ENTER)
    wait(d, lambda d: bad in text_of(d, "#build-error"), what="the build refused")
    assert service.get(user, "/containers").json()["containers"] == []
    for _ in "%bogus section":
        editor.send_keys(Keys.BACKSPACE)
    wait(d, lambda d: text_of(d, "#check-summary") == "No problems found.", what="fixed")

    # Build: the log arrives live; the page's WebSocket is dropped mid-build and the log
    # continues where it was, nothing lost and nothing twice.
    d.find_element(By.ID, "build").send_keys(Keys.ENTER)
    wait(d, lambda d: d.current_url.endswith("/c/tools"), what="the container page")
    wait(d, lambda d: "u2cb: build of tools started" in text_of(d, "#log"), timeout=120,
         what="the first lines of the log")
    assert "ended" not in text_of(d, "#log-status"), "the build ended before it was watched"
    d.execute_script("window.u2cbLog.socket.close()")
    wait(d, lambda d: d.execute_script("return window.u2cbLog.connects") >= 2,
         what="the page reconnecting")
    wait(d, lambda d: "The build has ended: Ready." in text_of(d, "#log-status"),
         timeout=600, what="the build to finish")
    assert text_of(d, "#log") == service_log(service, user, "tools")
    wait(d, lambda d: d.find_elements(By.ID, "download"), what="the page reloaded as ready")
    assert "Ready" in text_of(d, "#state")
    shot(d, "container")

    # The image as the user's own module (u2cb module), from the page's button.
    modules = user.home / ".local/share/hpcstack/modules"
    service.u2cb(user, "module", "--remove", "-n", "tools")  # a previous run's
    d.find_element(By.ID, "commands").send_keys("hello")
    d.find_element(By.ID, "make-module").send_keys(Keys.ENTER)
    wait(d, lambda d: "Module tools/latest made with hello" in text_of(d, "#note"),
         timeout=300, what="the module made")
    assert f"module use {modules}; module load tools" in text_of(d, "#note")
    proc = in_module_shell(user, "module use ~/.local/share/hpcstack/modules && "
                           "module load tools && hello")
    assert proc.stdout.strip() == "Hello, world!", proc.stdout + proc.stderr
    service.u2cb(user, "module", "--remove", "-n", "tools", check=True)

    # Download: the SIF, as the service has it.
    d.find_element(By.ID, "download").send_keys(Keys.ENTER)
    sif = d.downloads / "tools.sif"
    wait(d, lambda d: sif.exists() and not list(d.downloads.glob("*.crdownload")),
         timeout=300, what="the download")
    status = service.get(user, "/containers/tools").json()
    assert hashlib.sha256(sif.read_bytes()).hexdigest() == status["sha256"]

    # A terminal works in a sandbox: made from the image, then connect.
    d.find_element(By.ID, "make-sandbox").send_keys(Keys.ENTER)
    wait(d, lambda d: d.current_url.endswith("/c/tools-sandbox"), what="the sandbox page")
    wait(d, lambda d: d.find_elements(By.ID, "term-open"), timeout=300,
         what="the sandbox ready, with its terminal button")
    d.find_element(By.ID, "term-open").send_keys(Keys.ENTER)
    wait(d, lambda d: "# " in terminal_rows(d), what="the shell prompt")
    type_in_terminal(d, "whoami\n")
    wait(d, lambda d: "\nroot" in terminal_rows(d), what="whoami: root")
    type_in_terminal(d, "hello\n")
    wait(d, lambda d: "Hello, world!" in terminal_rows(d), what="the package in the image")
    type_in_terminal(d, "sleep 60; echo not-interrupted\n")
    time.sleep(1)
    type_in_terminal(d, Keys.CONTROL + "c")
    type_in_terminal(d, "echo status=$?\n")
    wait(d, lambda d: "status=130" in terminal_rows(d), what="Ctrl-C to interrupt")
    type_in_terminal(d, "clear; stty size\n")
    wait(d, lambda d: any(r.strip().replace(" ", "").isdigit() and len(r.split()) == 2
                          for r in terminal_rows(d).splitlines()), what="stty size")
    before = next(r.split() for r in terminal_rows(d).splitlines() if len(r.split()) == 2
                  and r.replace(" ", "").isdigit())
    d.set_window_size(900, 1000)
    time.sleep(0.5)
    type_in_terminal(d, "clear; stty size\n")
    wait(d, lambda d: any(len(r.split()) == 2 and r.replace(" ", "").isdigit()
                          and r.split() != before for r in terminal_rows(d).splitlines()),
         what="the new size after a resize")
    d.set_window_size(1280, 1000)
    type_in_terminal(d, "clear; whoami; hello\n")
    time.sleep(1)
    shot(d, "terminal")
    type_in_terminal(d, "exit 3\n")
    wait(d, lambda d: "exit status 3" in text_of(d, "#term-status"), what="exit status 3")

    # Delete, with a confirmation page first.
    for name in ("tools-sandbox", "tools"):
        d.get(f"{portal.url}/c/{name}")
        d.find_element(By.ID, "delete").send_keys(Keys.ENTER)
        wait(d, lambda d: d.find_elements(By.ID, "confirm-delete"), what="the confirmation")
        if name == "tools":
            shot(d, "delete")
        d.find_element(By.ID, "confirm-delete").send_keys(Keys.ENTER)
        wait(d, lambda d, name=name: f"Deleted {name}." in text_of(d, "main"),
             what="the list after deleting")
    assert service.get(user, "/containers").json()["containers"] == []


def test_list_shows_live_states(service: Service, portal: Portal, browser,
                                user: User) -> None:
    """The list: state, size, created, source; a queued build turns ready by itself."""
    from selenium.webdriver.common.by import By

    work = user.workdir("portal-list")
    (work / "tiny.def").write_text("Bootstrap: scratch\n\n%setup\n    sleep 3\n"
                                   "    echo hi > \"$APPTAINER_ROOTFS/hi.txt\"\n")
    os.chown(work / "tiny.def", user.uid, user.gid)
    (work / "broken.def").write_text("Bootstrap: scratch\n\n%setup\n    exit 3\n")
    os.chown(work / "broken.def", user.uid, user.gid)
    for name in ("tiny", "broken"):
        service.u2cb(user, "defcreate", "-n", name, "-d", f"{name}.def", "--detach", cwd=work,
                     check=True)
    browser.get(f"{portal.url}/")
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-name=tiny]")
    assert "tiny.def" in row.text
    wait(browser, lambda d: text_of(d, "tr[data-name=tiny] .state") == "Ready", timeout=120,
         what="the state turning ready without a reload")
    wait(browser, lambda d: text_of(d, "tr[data-name=broken] .state").startswith("Failed: "),
         timeout=120, what="the failed build with its reason")
    reason = service.get(user, "/containers/broken").json()["reason"]
    assert "exit status 3" in reason
    assert text_of(browser, "tr[data-name=broken] .state") == f"Failed: {reason}"
    assert text_of(browser, "tr[data-name=tiny] .size-cell") != "-"
    shot(browser, "list")
    # At 200% zoom (half the CSS pixels across) the page reflows: nothing to scroll sideways.
    for path in ("/", "/new", "/c/tiny"):
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 640, "height": 1000, "deviceScaleFactor": 2, "mobile": False})
        try:
            browser.get(f"{portal.url}{path}")
            wide = browser.execute_script("return [document.documentElement.scrollWidth, "
                                          "document.documentElement.clientWidth]")
            assert wide[0] <= wide[1], (path, wide)
            if path == "/":
                shot(browser, "list-zoom200")
        finally:
            browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_cancel_from_the_page(service: Service, portal: Portal, browser, user: User) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    work = user.workdir("portal-cancel")
    (work / "slow.def").write_text("Bootstrap: scratch\n\n%setup\n    echo waiting\n"
                                   "    sleep 300\n")
    os.chown(work / "slow.def", user.uid, user.gid)
    service.u2cb(user, "defcreate", "-n", "slow", "-d", "slow.def", "--detach", cwd=work,
                 check=True)
    browser.get(f"{portal.url}/c/slow")
    wait(browser, lambda d: "waiting" in text_of(d, "#log"), timeout=120, what="the build running")
    browser.find_element(By.ID, "cancel").send_keys(Keys.ENTER)
    wait(browser, lambda d: text_of(d, "#state").startswith("Cancelled"), timeout=60,
         what="the build cancelled")
    assert service.get(user, "/containers/slow").json()["state"] == "cancelled"
    service.u2cb(user, "delete", "-n", "slow", check=True)


# --- a second user ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second(service: Service, registry):  # noqa: F811
    user2 = _ensure_user(f"{TEST_USER}-2"[:32])
    p = Portal(user2, service, registry)
    yield p
    p.stop()


def test_second_user_sees_none_of_the_first(service: Service, portal: Portal, second: Portal,
                                           user: User) -> None:
    """Each page acts as its own user: another's container is "no such container"."""
    import asyncio

    from websockets.asyncio.client import connect

    names = [c["name"] for c in service.get(user, "/containers").json()["containers"]]
    assert "tiny" in names, names
    listing = httpx.get(f"{second.url}/", timeout=30)
    assert listing.status_code == 200 and "tiny" not in listing.text
    for path in ("/c/tiny", "/c/tiny/download", "/c/tiny/delete"):
        resp = httpx.get(f"{second.url}{path}", timeout=30)
        assert resp.status_code == 404 and "tiny: no such container" in resp.text, path
    resp = httpx.post(f"{second.url}/c/tiny/delete", timeout=30)
    assert resp.status_code == 404 and "tiny: no such container" in resp.text
    assert "tiny" in [c["name"] for c in service.get(user, "/containers").json()["containers"]]

    async def log_message() -> dict:
        url = second.url.replace("http://", "ws://") + "/c/tiny/log/ws"
        async with connect(url) as ws:
            return json.loads(await ws.recv())

    assert asyncio.run(log_message()) == {"error": "tiny: no such container"}
    # The first user's own page still shows it.
    assert "tiny" in httpx.get(f"{portal.url}/", timeout=30).text
    assert "broken" not in listing.text


# --- bad input ------------------------------------------------------------------------------


def test_shell_metacharacters_never_reach_post(portal: Portal) -> None:
    """Package names with shell metacharacters are refused, whatever the field."""
    for field, name in (("debs", "hello$(id)"), ("debs", "a`b`"), ("pips", "rich;ls"),
                        ("pips", "x|y"), ("debs", "'quoted'"), ("pips", "a>b&")):
        resp = httpx.post(f"{portal.url}/api/compose", timeout=30, json={
            "base": "docker://debian:bookworm", field: name})
        body = resp.json()
        assert body["text"] == "", (name, body)
        assert [p["field"] for p in body["problems"]] == [field], body


def test_syntax_error_starts_no_build(service: Service, portal: Portal, user: User) -> None:
    resp = httpx.post(f"{portal.url}/api/build", timeout=30, data={
        "name": "badsyntax", "mode": "definition", "filename": "mine.def",
        "definition": "Bootstrap: docker\nFrom: debian:bookworm\nthis is not a header\n"})
    assert resp.status_code == 422
    assert resp.json()["problems"] == [{
        "field": "definition", "line": 3,
        "message": "mine.def:3: expected 'Key: value' in header, got 'this is not a header'"}]
    assert service.get(user, "/containers/badsyntax").status_code == 404


def test_upload_over_the_limit(service: Service, portal: Portal, browser, user: User,
                               tmp_path: Path) -> None:
    """An upload past the service's --max-upload: the service's reason on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    definition = tmp_path / "big.def"
    definition.write_text("Bootstrap: scratch\n\n%files\n    big.bin /big.bin\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(LIMIT + 4096))
    os.chmod(tmp_path, 0o755)
    d = browser
    d.get(f"{portal.url}/new")
    d.find_element(By.ID, "name").send_keys("big")
    d.find_element(By.ID, "mode-upload").send_keys(Keys.SPACE)
    d.find_element(By.ID, "deffile").send_keys(str(definition))
    wait(d, lambda d: "%files" in d.find_element(By.ID, "definition").get_attribute("value"),
         what="the uploaded definition in the editor")
    wait(d, lambda d: text_of(d, "#check-summary") == "No problems found.", what="checked")
    d.find_element(By.ID, "files").send_keys(str(big))
    d.find_element(By.ID, "build").send_keys(Keys.ENTER)
    wait(d, lambda d: "is over the limit of" in text_of(d, "#build-error"),
         what="the service's limit")
    assert f"over the limit of {LIMIT} bytes" in text_of(d, "#build-error")
    assert service.get(user, "/containers/big").status_code == 404


def test_generated_app_files(portal: Portal) -> None:
    """What ``studio generate`` wrote: the manifest, the launcher and the page's settings."""
    files = sorted(p.name for p in portal.app.iterdir())
    assert files == ["app.js", "manifest.yml", "portal.yaml"]
    assert shutil.which("node")
    proc = subprocess.run(["node", "--check", str(portal.app / "app.js")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
