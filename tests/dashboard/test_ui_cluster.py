"""The dashboard's cluster panel in a real browser against a real two-node cluster
(replication factor 2): nodes with their state and shards, under-replicated shards, and
the even-node warning shown in orange."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.cluster.cluster_support import TestCluster, running_cluster
from tests.dashboard.test_ui_browser import CHROMIUM, Tab, browser, playwright, shots

__all__ = ["browser", "playwright", "shots"]  # fixtures shared with the other browser tests

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    with running_cluster(tmp_path_factory.mktemp("ui-cluster"), 2, replication_factor=2) as c:
        yield c


def test_cluster_panel_shows_nodes_replication_and_the_even_node_warning(
    browser: Browser, cluster: TestCluster, shots: Path
) -> None:
    node = cluster.nodes[0]
    key = node.create_admin_key()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        tab = Tab(context, node)
        tab.login(key)
        page = tab.page
        warning = page.locator("#cluster-parity")
        expect(warning).to_be_visible()
        expect(warning).to_contain_text("Even node count (2)")
        # Orange: the text and the frame of the warning have an orange hue.
        for prop in ("color", "borderLeftColor", "backgroundColor"):
            colour = warning.evaluate(f"e => getComputedStyle(e).{prop}")
            assert 15 <= _hue(colour) <= 45, (prop, colour)
        body = page.locator("#cluster-body")
        for member in cluster.nodes:
            expect(body.get_by_role("cell", name=member.node_id)).to_be_visible()
        expect(body).to_contain_text("2/2 active")
        expect(body).to_contain_text("Under-replicated shards")
        expect(body.locator("dd.good")).to_contain_text("0")
        expect(body).to_contain_text("replication factor 2")
        tab.shot(shots, "cluster")
        tab.check_origin_and_storage()
    finally:
        context.close()


def _hue(css: str) -> float:
    """The hue (degrees) of a computed ``rgb(r, g, b)`` colour."""
    red, green, blue = (int(v) / 255 for v in re.findall(r"\d+", css)[:3])
    high, low = max(red, green, blue), min(red, green, blue)
    if high == low:
        return -1.0  # grey: no hue
    if high == red:
        hue = (green - blue) / (high - low) % 6
    elif high == green:
        hue = (blue - red) / (high - low) + 2
    else:
        hue = (red - green) / (high - low) + 4
    return hue * 60
