"""The Dagster UI in a real browser: headless Chromium against a real ``dagster-webserver``.

Our code location makes real materializations (simulated telemetry to Level 0 and early Level 1,
one camera, reduced size) on an embedded instance, as ``punchpipe demo`` does; the webserver serves
that instance and Chromium (Debian's package, driven by Playwright) loads the asset graph, an
asset's partitions page and a materialization with its quicklook. Every page fails the test on a
Dagster error box, a Python traceback, the word "Error", a JavaScript console error, a failed request,
a GraphQL error or an image that did not load. Screenshots of every page are kept as artifacts.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from PIL import Image
from playwright.sync_api import Page, Response, sync_playwright

from punchpipe_assets.config import immediate_config
from punchpipe_assets.runner import INSTANCE_TEMPLATE
from punchpipe_tests.chain import WFI, run_chain_to_level1, small_mosaic_config
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.test_end_to_end import (
    BIN,
    REPO,
    GraphQL,
    check_workspace_loads,
    dagster_process,
    ensure_alive,
    free_port,
    print_logs,
)

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"Debian's chromium is not installed at {CHROMIUM} (.ci/run installs it)"
    ),
]

HOURS = 0.1  # six minutes of telemetry: a few frames of each polarizer, one partition
CAMERA = WFI[0]
PARTITION = "2025-08-01-12:00"
ARTIFACTS = Path(os.environ.get("PUNCHPIPE_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
PAGE_TIMEOUT_MS = 30_000
#: What Dagster shows when something broke: error boxes, error toasts, load errors, tracebacks.
ERROR_TEXT = re.compile(
    r"Traceback \(most recent call last\)|\bError\b|GraphQL error|can[’']t be displayed|failed to load|"
    r"Code location not found|PythonError|View errors?\b|\bFailed\b(?! \(0\))"
)


def graphql_errors(body: Any) -> list[str]:
    """Return the GraphQL errors and ``PythonError`` results anywhere in a response body."""
    found = [json.dumps(error)[:500] for error in body.get("errors") or []] if isinstance(body, dict) else []
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("__typename") == "PythonError":
                found.append(str(node.get("message", node))[:500])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


class PageWatch:
    """Record what a page reports going wrong: console errors, uncaught exceptions, failed requests."""

    def __init__(self, page: Page):
        self.page = page
        self.problems: list[str] = []  # of the page being checked
        self.found: list[str] = []  # of every page checked
        self.graphql: list[Response] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console error: {m.text[:500]}"))
        page.on("pageerror", lambda e: self.problems.append(f"uncaught exception: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _failed(self, request: Any) -> None:
        if request.failure != "net::ERR_ABORTED":  # polling cut short by navigating on
            self.problems.append(f"request failed: {request.url[:200]} {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url[:200]}")
        elif response.url.split("?", 1)[0].endswith("/graphql"):
            self.graphql.append(response)

    def screenshot(self, name: str) -> None:
        """Keep a screenshot of the page as a test artifact."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)

    @contextmanager
    def visit(self, name: str, url: str) -> Iterator[Page]:
        """Load ``url`` for the block's assertions, then screenshot it and record what it showed going wrong."""
        self.page.goto(url)
        try:
            yield self.page
        except BaseException:
            self.screenshot(f"{name}-FAILED")
            raise
        self.found += self.check(name)

    def check(self, name: str) -> list[str]:
        """Screenshot the page as ``name`` and return every problem seen since the last check."""
        page = self.page
        page.wait_for_load_state("networkidle")
        self.screenshot(name)
        problems, self.problems = self.problems, []
        for response in self.graphql:
            try:
                problems += [f"GraphQL: {error}" for error in graphql_errors(response.json())]
            except Exception:  # noqa: BLE001 - not JSON (multipart, aborted on navigation): the request checks see it
                pass
        self.graphql = []
        text = page.inner_text("body")
        problems += [f"page shows {match.group(0)!r}" for match in ERROR_TEXT.finditer(text)]
        page.wait_for_function("[...document.images].every(i => i.complete)", timeout=PAGE_TIMEOUT_MS)
        broken = page.evaluate("[...document.images].filter(i => i.naturalWidth === 0).map(i => i.src.slice(0, 80))")
        problems += [f"image did not load: {src}" for src in broken]
        return [f"{name}: {problem}" for problem in problems]


@contextmanager
def chromium_page() -> Iterator[Page]:
    """Open a headless Chromium page (Debian's executable, never a downloaded browser), community dialog dismissed."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
            yield page
        finally:
            browser.close()


@pytest.fixture
def browser_page() -> Iterator[Page]:
    """Provide a headless Chromium page."""
    with chromium_page() as page:
        yield page


def test_the_page_checks_see_errors(browser_page):
    """The checks the UI test relies on fail on a traceback, a console error and a broken image."""
    watch = PageWatch(browser_page)
    browser_page.set_content(
        "<p>Traceback (most recent call last)</p><img src='data:image/png;base64,AAAA'>"
        "<script>console.error('boom')</script>"
    )
    problems = " | ".join(watch.check("self-check"))
    assert "Traceback" in problems and "console error: boom" in problems and "image did not load" in problems
    browser_page.set_content("<p>level0_wfi1 materialized</p>")
    assert watch.check("self-check-clean") == []


def latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> dg.EventLogRecord:
    """Return the newest materialization record of an asset's test partition."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[PARTITION]), limit=1
    ).records
    assert records, f"{key.to_user_string()} {PARTITION} was not materialized"
    return records[0]


def test_asset_graph_partitions_and_quicklook_render_in_chromium(tmp_path):
    """Real materializations of our code location, shown by a real webserver, loaded in headless Chromium."""
    config = small_mosaic_config(immediate_config(tmp_path / "home"))
    dagster_home = Path(config.dagster_home)
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(INSTANCE_TEMPLATE, dagster_home / "dagster.yaml")  # the embedded instance of the demo
    config_path = dagster_home / "punchpipe-effective.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    (tmp_path / "logs").mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "PUNCHPIPE_CONFIG": str(config_path),
        "PUNCHPIPE_HOME": str(config.home),
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    args = [str(BIN / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    try:
        with (
            dg.DagsterInstance.from_config(str(dagster_home)) as instance,
            dagster_process("webserver", args, env, tmp_path / "logs") as webserver,
        ):
            # The webserver loads the code location while our code makes the products.
            started = time.monotonic()
            run_chain_to_level1(
                config, instance, SIMULATION_START, HOURS, cameras=(CAMERA,), stages=("level0", "level1_early")
            )
            print(f"Level 0 and early Level 1 made in {time.monotonic() - started:.1f} s")
            level0, early = dg.AssetKey(f"level0_{CAMERA.slug}"), dg.AssetKey(f"level1_early_{CAMERA.slug}")
            level0_record, early_record = latest(instance, level0), latest(instance, early)
            gql = GraphQL(port)
            check_workspace_loads(gql, ensure_alive(webserver))
            gql.session.close()
            print(f"webserver and code location up after {time.monotonic() - started:.1f} s")
            started = time.monotonic()
            with chromium_page() as page:  # after the runs: Playwright's event loop stays out of Dagster's way
                problems = browse(page, f"http://127.0.0.1:{port}", level0_record, early_record)
            print(f"pages loaded and checked in {time.monotonic() - started:.1f} s")
            assert not problems, "\n".join(problems)
    except BaseException:
        print_logs(tmp_path / "logs")
        raise


def browse(page: Page, base: str, level0: dg.EventLogRecord, early: dg.EventLogRecord) -> list[str]:
    """Load each page, assert what it must show, return the problems the pages showed."""
    watch = PageWatch(page)
    camera = CAMERA.slug

    with watch.visit("1-global-asset-graph", f"{base}/asset-groups"):  # one box per group
        graph = page.locator("svg foreignObject")
        for group in ("telemetry", "calibration", "level0", "level1", "level2", "level3", "levelq"):
            graph.get_by_text(group, exact=True).first.wait_for()

    with watch.visit("2-level1-asset-graph", f"{base}/locations/punchpipe/asset-groups/level1/lineage"):
        node = page.locator("foreignObject", has=page.locator(f'[data-tooltip="level1_early_{camera}"]'))
        node.locator(f'a[href^="/runs/{early.run_id}"]').wait_for()  # "Latest event": our run

    with watch.visit("3-level0-partitions", f"{base}/assets/level0_{camera}?view=partitions&partition={PARTITION}"):
        page.get_by_text("Materialized (1)").wait_for()
        page.locator(f'a[href*="{level0.run_id}"]').first.wait_for()
        frames_made = level0.asset_materialization.metadata["frames_made"].value
        row = page.locator("tr", has=page.get_by_text("frames_made", exact=True))
        assert row.locator("td").nth(1).inner_text().strip() == str(frames_made)

    events = f"{base}/assets/level1_early_{camera}?view=events&partition={PARTITION}"
    with watch.visit("4-level1-early-quicklook", events):
        page.get_by_text(f"materialized in run {early.run_id[:8]}").wait_for()
        page.locator("tr", has=page.get_by_text("quicklook", exact=True)).get_by_text("[Show Markdown]").click()
        image = page.get_by_role("dialog").locator("img")
        image.wait_for()
        markdown = early.asset_materialization.metadata["quicklook"].value
        uri = re.search(r"\((data:image/png;base64,[^)]+)\)", markdown).group(1)
        assert image.get_attribute("src") == uri  # the quicklook of this materialization
        png = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        page.wait_for_function("i => i.complete", arg=image.element_handle())
        assert min(png.size) > 0 and image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == list(png.size)

    with watch.visit("5-code-locations", f"{base}/locations"):  # as Deployment shows it
        row = page.locator("[data-index]", has=page.locator('a[href="/locations/punchpipe/"]'))
        row.get_by_text("Loaded", exact=True).wait_for()
    return watch.found
