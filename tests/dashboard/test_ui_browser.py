"""The dashboard in a real browser (Debian's headless Chromium via Playwright) against a
real node: every action goes through the node's API and is checked there.

Each test writes a screenshot of the page it drove to ``$TOKMESH_SCREENSHOTS`` (the docs
regenerate ``docs/images/dashboard`` that way) or to pytest's temporary directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.support.server import ServerProcess

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium reaches out to Google's services.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY_STORE = "tokmesh.dashboard.key"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$TOKMESH_SCREENSHOTS`` if set, else a temporary directory."""
    wanted = os.environ.get("TOKMESH_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Tab:
    """One browser tab on the dashboard, recording every request it makes."""

    def __init__(self, context: BrowserContext, node: ServerProcess) -> None:
        self.context = context
        self.node = node
        self.page: Page = context.new_page()
        self.urls: list[str] = []
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.on("websocket", lambda ws: self.urls.append(ws.url))
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def login(self, key: str) -> None:
        page = self.page
        response = page.goto(self.node.base_url + "/ui")
        assert response is not None and response.status == 200
        page.get_by_role("textbox", name=re.compile("^API key")).fill(key)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#who")).to_be_visible()

    def go(self, name: str) -> None:
        self.page.get_by_role("navigation", name="Pages").get_by_role("link", name=name).click()

    def confirm(self, typed: str | None = None) -> None:
        dialog = self.page.locator("#confirm")
        expect(dialog).to_be_visible()
        ok = dialog.get_by_role("button", name=re.compile("Revoke|Disable|Restore|Rotate"))
        if typed is not None:
            expect(ok).to_be_disabled()
            dialog.get_by_label(f"Type {typed} to confirm").fill(typed)
        ok.click()
        expect(dialog).to_be_hidden()

    def shot(self, folder: Path, name: str) -> None:
        self.page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    def check_origin_and_storage(self) -> None:
        """Nothing left the node's origin; the key is only in sessionStorage."""
        origin = urlsplit(self.node.base_url)
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme in ("blob", "data"):
                continue
            assert (parts.hostname, parts.port) == (origin.hostname, origin.port), url
        assert self.context.cookies() == []
        assert self.page.evaluate("localStorage.length") == 0
        assert self.errors == []


@pytest.fixture
def tab(browser: Browser, node: ServerProcess) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield Tab(context, node)
    finally:
        context.close()


def api(node: ServerProcess, key: str) -> httpx.Client:
    return node.client(key)


def test_overview_matches_the_api(
    tab: Tab, node: ServerProcess, admin_key: str, shots: Path
) -> None:
    with api(node, admin_key) as client:
        client.post("/sessions", json={"user_id": "overview-user", "device_id": "d"})
        client.post("/admin/v1/backups/snapshots", json={})
        tab.login(admin_key)
        page = tab.page
        # Some traffic between the page's /metrics samples, for the charts to show.
        token = client.post("/sessions", json={"user_id": "overview-user"}).json()["data"]["token"]
        for _ in range(200):
            client.post("/tokens/validate", json={"token": token})
        client.post("/tokens/validate", json={"token": "tmtk_unknown"})
        page.wait_for_timeout(2100)
        # Admin figures are read on entry and every 30 s (admin reads are audited); the
        # button reads them now.
        page.get_by_role("button", name="Refresh").click()
        summary = client.get("/admin/v1/status/summary").json()["data"]
        keys = client.get("/admin/v1/keys", params={"size": 1}).json()["data"]
        snaps = client.get("/admin/v1/backups/snapshots").json()["data"]
        wal = client.get("/admin/v1/wal/status").json()["data"]

    def value(card: str) -> Locator:
        return page.locator(f"#ov-{card} .value")

    expect(value("version")).to_have_text(summary["version"])
    expect(value("node")).to_have_text(summary["node_id"])
    expect(value("sessions")).to_have_text(str(summary["total_sessions"]))
    expect(value("records")).to_have_text(str(summary["metrics"]["stored_records"]))
    expect(value("keys")).to_have_text(str(keys["total_items"]))
    expect(value("snapshots")).to_have_text(str(snaps["total_items"]))
    expect(value("wal")).to_have_text(re.compile(rf"^{wal['total_segments']} segments?$"))
    expect(value("health")).to_have_text("healthy")
    expect(value("ready")).to_have_text("ready")
    expect(page.locator("#cluster-body")).to_contain_text("Standalone node")
    # Four uPlot charts (the rates need two /metrics samples, 2 s apart).
    expect(page.locator(".charts .uplot")).to_have_count(4)
    # The rates come from /metrics: the 200 validations and the creates above show up.
    expect(page.locator("#now-validations")).to_have_text(re.compile(r"max [1-9]"))
    expect(page.locator("#now-creates")).to_have_text(re.compile(r"max 0\.[1-9]"))
    expect(page.locator("#now-errors")).to_have_text(re.compile(r"max 0\.[1-9]"))
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select')]"
        ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id)"
    )
    assert unlabelled == []
    stored = page.evaluate(f"sessionStorage.getItem('{KEY_STORE}')")
    assert stored == admin_key
    tab.shot(shots, "overview")
    tab.check_origin_and_storage()


def test_find_and_revoke_sessions(
    tab: Tab, node: ServerProcess, admin_key: str, shots: Path
) -> None:
    with api(node, admin_key) as client:
        made = [
            client.post("/sessions", json={"user_id": "bob", "device_id": f"dev-{i}"}).json()[
                "data"
            ]
            for i in range(3)
        ]
        tab.login(admin_key)
        tab.go("Sessions")
        page = tab.page
        missing = "tmss-01m94zzzzzzzzzzzzzzzzzzzzz"
        r = client.get(f"/sessions/{missing}")
        page.get_by_label("Search by").select_option("session")
        page.get_by_label("Search text").fill(missing)
        page.get_by_role("button", name="Search").click()
        error = r.json()
        expect(page.locator("#error-text")).to_have_text(f"{error['code']}: {error['message']}")
        page.get_by_label("Search by").select_option("user")
        page.get_by_label("Search text").fill("bob")
        page.get_by_role("button", name="Search").click()
        expect(page.locator("#error")).to_be_hidden()
        rows = page.locator("#session-table tbody tr")
        expect(rows).to_have_count(3)
        expect(page.locator("#session-table")).to_contain_text("dev-1")
        tab.shot(shots, "sessions")

        # Revoke one from the page; the node refuses its token from then on.
        first = made[0]
        page.get_by_role("button", name=f"Revoke session {first['session_id']}").click()
        tab.confirm()
        expect(rows).to_have_count(2)
        r = client.post("/tokens/validate", json={"token": first["token"]})
        assert r.status_code == 401
        assert r.json()["code"].startswith("TM-TOKN-401")

        # Revoke all but one: the typed confirmation must name the user.
        keep = made[2]
        page.get_by_label("keep one session:").check()
        page.get_by_label("Session to keep").select_option(keep["session_id"])
        page.get_by_role("button", name="Revoke all sessions of bob").click()
        tab.confirm(typed="bob")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text(keep["session_id"])
        assert client.post("/tokens/validate", json={"token": made[1]["token"]}).status_code == 401
        assert client.post("/tokens/validate", json={"token": keep["token"]}).status_code == 200
    tab.check_origin_and_storage()


def test_create_and_disable_a_key(
    tab: Tab, node: ServerProcess, admin_key: str, shots: Path
) -> None:
    tab.login(admin_key)
    tab.go("API keys")
    page = tab.page
    form = page.locator("#key-create")
    form.get_by_label("Role").select_option("validator")
    form.get_by_label("Description").fill("gateway from the dashboard")
    page.get_by_role("button", name="Create key").click()
    secret_box = page.locator("#secret")
    expect(secret_box).to_be_visible()
    expect(secret_box).to_contain_text("shown once")
    credential = page.locator("#secret-value").input_value()
    key_id = credential.split(":")[0]
    with node.client(credential) as gateway:
        assert gateway.post("/tokens/validate", json={"token": "tmtk_x"}).status_code == 400
    tab.shot(shots, "keys")
    page.get_by_role("button", name="Done").click()
    expect(page.locator("#secret-value")).to_have_value("")

    # Rotate: a new secret, shown once the same way, that the node accepts.
    page.get_by_role("button", name=f"Rotate key {key_id}").click()
    tab.confirm()
    expect(secret_box).to_be_visible()
    expect(page.locator("#secret-note")).to_contain_text("old secret stops working")
    credential = page.locator("#secret-value").input_value()
    assert credential.startswith(key_id + ":")
    with node.client(credential) as gateway:
        assert gateway.post("/tokens/validate", json={"token": "tmtk_x"}).status_code == 400
    page.get_by_role("button", name="Done").click()

    page.get_by_role("button", name=f"Disable key {key_id}").click()
    tab.confirm()
    expect(page.get_by_role("button", name=f"Enable key {key_id}")).to_be_visible()
    with node.client(credential) as gateway:
        assert gateway.post("/tokens/validate", json={"token": "tmtk_x"}).status_code == 401
    with api(node, admin_key) as client:
        listed = client.get("/admin/v1/keys", params={"size": 100}).json()["data"]["items"]
    assert {k["key_id"]: k["status"] for k in listed}[key_id] == "disabled"
    tab.check_origin_and_storage()


def test_snapshot_and_download(tab: Tab, node: ServerProcess, admin_key: str, shots: Path) -> None:
    tab.login(admin_key)
    tab.go("Backups")
    page = tab.page
    page.locator("#snapshot-form").get_by_label("Description").fill("from the dashboard")
    page.get_by_role("button", name="Take snapshot").click()
    row = page.locator("#snapshot-table tbody tr", has_text="from the dashboard")
    expect(row).to_have_count(1)
    snapshot_id = row.locator("code").inner_text()
    with page.expect_download() as info:
        row.get_by_role("button", name=f"Download snapshot {snapshot_id}").click()
    download = info.value
    assert download.suggested_filename == f"{snapshot_id}.bak"
    with api(node, admin_key) as client:
        expected = client.get(f"/admin/v1/backups/snapshots/{snapshot_id}/file").content
    assert Path(download.path()).read_bytes() == expected
    tab.shot(shots, "backups")
    tab.check_origin_and_storage()


def test_metrics_key_sees_the_read_only_view(tab: Tab, node: ServerProcess, shots: Path) -> None:
    metrics_key = node.create_key("metrics")
    page = tab.page
    page.goto(node.base_url + "/ui")
    # Keyboard only: the skip link comes first, then the key field; Enter submits.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#login-key")).to_be_focused()
    page.keyboard.type(metrics_key)
    page.keyboard.press("Enter")
    expect(page.locator("#who-role")).to_contain_text("read-only")
    nav = page.get_by_role("navigation", name="Pages")
    expect(nav.get_by_role("link")).to_have_count(1)
    expect(nav.get_by_role("link", name="Overview")).to_be_visible()
    for hidden in ("#ov-keys", "#ov-wal", "#overview-refresh", "#cluster"):
        expect(page.locator(hidden)).to_be_hidden()
    expect(page.locator("#ov-sessions .value")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator(".charts .uplot")).to_have_count(4)
    # Asking for an admin page by URL still shows the overview.
    page.evaluate("location.hash = '#keys'")
    expect(page.locator("#page-overview")).to_be_visible()
    expect(page.locator("#page-keys")).to_be_hidden()
    admin_calls = [u for u in tab.urls if "/admin/v1/" in u]
    assert admin_calls == [tab.node.base_url + "/admin/v1/status/summary"]  # the role probe
    tab.shot(shots, "read-only")
    tab.check_origin_and_storage()


def test_a_disabled_key_returns_to_the_login(tab: Tab, node: ServerProcess, admin_key: str) -> None:
    second = node.create_key("admin")
    tab.login(second)
    tab.go("API keys")
    page = tab.page
    expect(page.locator("#key-table")).to_contain_text(second.split(":")[0])
    with api(node, admin_key) as client:
        r = client.post(
            f"/admin/v1/keys/{second.split(':')[0]}/status", json={"status": "disabled"}
        )
        assert r.status_code == 200
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#page-login")).to_be_visible()
    expect(page.locator("#error-text")).to_contain_text("TM-AUTH-401")
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORE}')") is None
    tab.check_origin_and_storage()


@pytest.mark.skipif(
    os.environ.get("TOKMESH_TEST_HTTP_ENGINE") == "hypercorn",
    reason="GET /events is served by the native HTTP engine only",
)
def test_live_events(tab: Tab, node: ServerProcess, admin_key: str, shots: Path) -> None:
    tab.login(admin_key)
    tab.go("Events")
    page = tab.page
    expect(page.locator("#events-state")).to_have_text("Live.")
    with api(node, admin_key) as client:
        made = client.post("/sessions", json={"user_id": "eve", "device_id": "phone"})
        session_id = made.json()["data"]["session_id"]
        client.post(f"/sessions/{session_id}/revoke", json={})
        client.post("/sessions", json={"user_id": "mallory"})
    rows = page.locator("#events-table tbody tr")
    expect(rows.filter(has_text=session_id)).to_have_count(2)  # created, then revoked
    expect(rows.filter(has_text="mallory")).to_have_count(1)
    page.get_by_label("Type", exact=True).select_option("revoked")
    page.get_by_label("User ID", exact=True).fill("eve")
    visible = page.locator("#events-table tbody tr:visible")
    expect(visible).to_have_count(1)
    expect(visible).to_contain_text(session_id)
    expect(visible).to_contain_text("revoked")
    tab.shot(shots, "events")
    tab.check_origin_and_storage()


def test_restore_a_snapshot(tab: Tab, node: ServerProcess, admin_key: str) -> None:
    # Last in this module: the restore puts the node back to the snapshot taken here.
    with api(node, admin_key) as client:
        client.post("/admin/v1/backups/snapshots", json={"description": "before restore"})
        later = client.post("/sessions", json={"user_id": "after-snapshot"}).json()["data"]
    tab.login(admin_key)
    tab.go("Backups")
    page = tab.page
    row = page.locator("#snapshot-table tbody tr", has_text="before restore")
    snapshot_id = row.locator("code").inner_text()
    row.get_by_role("button", name=f"Restore snapshot {snapshot_id}").click()
    tab.confirm(typed="RESTORE")
    expect(page.locator("#restore-progress")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("Restore finished", timeout=20_000)
    expect(page.locator("#restore-progress")).to_have_attribute("value", "100")
    with api(node, admin_key) as client:
        r = client.post("/tokens/validate", json={"token": later["token"]})
    assert r.status_code == 401
    tab.check_origin_and_storage()
