"""The whole flow in a real browser: headless Chromium (Debian's), driven by Playwright.

built-in digits (demo switch on) → train → the validation labels checked → score (fast) → trust
check on groups and top sets → the label filter → tick top 10 → retrain (last epoch) with 20
random controls → the comparison shows both error rates and their significance; a refresh keeps
the session. Saves a screenshot of each page
(into assets/ for the README when UPDATE_SCREENSHOTS=1, else into a temporary folder, so a test
run leaves the checkout clean). Other tests: the review grid of the label check's flagged
images (class-pair filter, accept and reject with the keyboard, search by id), two browser
sessions at once, and "why this mistake?".
"""
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from influence import cleaning

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ASSETS = (ROOT / "assets" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else
          Path(os.environ.get("TMPDIR", "/tmp")) / "influence-screenshots")
ASSETS.mkdir(parents=True, exist_ok=True)
HEADER, ROW = 36, 84  # a review grid's header and row heights (app.sections.review)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="Debian's chromium is not installed (/usr/bin/chromium); "
                              "`make test` installs it"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run app/main.py` on a free port with its own empty workspace."""
    port = free_port()
    workspace = tmp_path_factory.mktemp("workspace")
    env = {**os.environ, "INFLUENCE_WORKSPACE": str(workspace)}
    log = open(workspace.parent / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the streamlit server did not become healthy")
        yield url, workspace
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def settle(page, quiet: float = 1.5, timeout: float = 60) -> None:
    """Wait until the app has finished running (no 'running' status for `quiet` seconds)."""
    deadline, calm_since = time.time() + timeout, None
    while time.time() < deadline:
        if page.get_by_test_id("stStatusWidget").filter(has_text=re.compile("Running|Stop",
                                                                            re.I)).count():
            calm_since = None
        elif calm_since is None:
            calm_since = time.time()
        elif time.time() - calm_since >= quiet:
            return
        time.sleep(0.2)
    raise AssertionError("the app kept running")


def wait_for_text(page, text: str, timeout: float = 120) -> None:
    page.get_by_text(text, exact=False).filter(visible=True).first.wait_for(
        timeout=timeout * 1000)


def no_errors(page) -> None:
    assert page.get_by_test_id("stException").count() == 0, page.inner_text("body")[:3000]


def shoot(page, name: str) -> None:
    """A screenshot of the whole page (Streamlit scrolls inside its main container)."""
    height = page.evaluate("() => Math.max(...Array.from(document.querySelectorAll("
                           "'[data-testid=stMain], section.main, body')).map(e => "
                           "e.scrollHeight))")
    page.mouse.move(1, 1)  # no hover effects (chart toolbars) in the picture
    page.set_viewport_size({"width": 1400, "height": min(max(900, height + 120), 6000)})
    time.sleep(0.8)
    page.screenshot(path=str(ASSETS / name))
    page.set_viewport_size({"width": 1400, "height": 900})


def go(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title).click()
    settle(page)


def open_app(page, url: str) -> None:
    page.goto(url)
    wait_for_text(page, "Current data set: Handwritten digits")
    settle(page)
    no_errors(page)


def demo_on(page) -> None:
    """Page 1's demo switch: flip 10 % of the training labels."""
    page.get_by_text("Demo: flip some training labels").click()  # applied at once
    wait_for_text(page, "Demo on:")
    settle(page)
    no_errors(page)


def edit_decision(page, grid, row: int, decision: str) -> None:
    """In a review grid, open the decision cell of a row (0 = the first image) and choose by
    typing, as a keyboard user does."""
    grid.dblclick(position={"x": 40, "y": HEADER + ROW * row + ROW / 2})
    editor = page.locator("#portal input[role=combobox]")
    editor.wait_for(timeout=10_000)
    editor.focus()
    page.keyboard.type(decision)
    page.keyboard.press("Enter")
    settle(page)


def decided(page) -> tuple[int, int]:
    found = re.search(r"(\d+) accepted, (\d+) rejected", page.inner_text("body"))
    assert found, page.inner_text("body")[:3000]
    return int(found[1]), int(found[2])


def review_training_labels(page) -> None:
    """Page 3: run the label check, filter the review grid by its most confused class pair,
    accept one fix and reject another with the keyboard, search by id, forget the decisions."""
    page.get_by_role("button", name=re.compile("Run the label check on the training")).click()
    wait_for_text(page, "flagged images not decided yet", timeout=240)
    settle(page)
    no_errors(page)
    assert re.search(r"about \d+ images labelled \S+ look like \S+", page.inner_text("body"))
    page.get_by_role("combobox", name="Class pair").filter(visible=True).first.click()
    pair = page.get_by_role("option").nth(1)  # the most frequent pair
    count = int(re.search(r"\((\d+)\)$", pair.inner_text())[1])
    pair.click()
    settle(page)
    assert f"{count} image{'s' * (count != 1)} match" in page.inner_text("body")
    grid = page.get_by_test_id("stDataFrame").filter(visible=True).first
    grid.scroll_into_view_if_needed()
    edit_decision(page, grid, 0, "accept")
    assert decided(page) == (1, 0)
    if count > 1:
        edit_decision(page, grid, 1, "reject")
        assert decided(page) == (1, 1)
    no_errors(page)
    shoot(page, "screenshot-3-review.png")
    search = page.get_by_role("textbox", name="Search by sample id").filter(visible=True).first
    search.fill("digits-00")  # ids 0000–0099: the training images among them, flagged or not
    search.press("Enter")
    settle(page)
    found = re.search(r"([\d,]+) images? match", page.inner_text("body"))
    assert found and 0 < int(found[1]) < 100, page.inner_text("body")[:3000]
    search.fill("")
    search.press("Enter")
    settle(page)
    page.get_by_role("button", name="Forget these decisions").filter(visible=True).first.click()
    settle(page)
    assert decided(page) == (0, 0)
    no_errors(page)


def test_whole_flow_on_digits(server, browser):
    url, workspace = server
    ASSETS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    open_app(page, url)
    preselected = page.get_by_role("combobox", name="Built-in data set").input_value()
    assert preselected == "Handwritten digits (offline, 1,797 images)"
    demo_on(page)  # planted label noise, for the tool to find
    shoot(page, "screenshot-1-data.png")

    go(page, "2 · Train")
    wait_for_text(page, "Before you start")
    page.get_by_role("button", name=re.compile("Start training")).click()
    wait_for_text(page, "Next: find the harmful training images", timeout=180)
    settle(page)
    no_errors(page)
    assert "Test error" in page.inner_text("body")
    shoot(page, "screenshot-2-train.png")

    go(page, "3 · Harmful images")
    wait_for_text(page, "Check the yardstick: the validation labels")  # checked before ranking
    page.get_by_text("Fast: last epoch only").click()
    page.get_by_role("button", name=re.compile("^Compute influence")).click()
    wait_for_text(page, "Ranked training images", timeout=240)
    settle(page)
    page.get_by_role("button", name="Check against real retraining").click()  # trust check
    wait_for_text(page, "Checked against real retraining.", timeout=240)
    settle(page)
    assert re.search(r"Spearman -?\d\.\d\d", page.inner_text("body"))  # the groups
    page.get_by_text("Only where the given label ≠ the predicted one").click()  # the filter
    settle(page)
    no_errors(page)
    page.get_by_text("Only where the given label ≠ the predicted one").click()
    settle(page)
    page.get_by_role("button", name=re.compile("Tick top 10")).click()
    settle(page)
    wait_for_text(page, "10 images ticked")
    no_errors(page)
    page.get_by_text("Look closer at one image of this page").click()  # the large view
    wait_for_text(page, "Removing this is estimated to lower validation loss by")
    shoot(page, "screenshot-3-harmful.png")

    go(page, "4 · Retrain and compare")
    page.get_by_text("only the last epoch without them").click()
    settle(page)
    page.get_by_role("button", name=re.compile("Retrain without the 10 ticked")).click()
    wait_for_text(page, "Before and after", timeout=240)
    settle(page)
    no_errors(page)
    body = page.inner_text("body")
    assert re.search(r"Test error — before\s+\d+\.\d\d%", body), body[:3000]
    assert re.search(r"Test error — after cleaning\s+\d+\.\d\d%", body), body[:3000]
    assert f"Against {cleaning.CONTROLS} random rounds (removing as many random images" in body, body[:3000]
    assert "McNemar's exact test" in body  # every claim with its test
    assert "Captions: given label" in body and "true label" not in body.lower()
    shoot(page, "screenshot-4-compare.png")

    # a refresh keeps the session: same data set, run and ticks, from the URL's session id
    page.reload()
    wait_for_text(page, "Before and after", timeout=60)
    settle(page)
    assert "Ticked: 10 images" in page.inner_text("body")


def test_review_the_flagged_training_labels_with_the_keyboard(server, browser):
    """Page 3's review grid on the demo's flipped labels: logistic regression (quick), the fast
    ranking, the label check, then the grid."""
    url, _ = server
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    open_app(page, url)
    demo_on(page)
    go(page, "2 · Train")
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="logistic regression").click()
    settle(page)
    page.get_by_role("button", name=re.compile("Start training")).click()
    wait_for_text(page, "Next: find the harmful training images", timeout=180)
    settle(page)
    go(page, "3 · Harmful images")
    page.get_by_text("Fast: last epoch only").click()
    page.get_by_role("button", name=re.compile("^Compute influence")).click()
    wait_for_text(page, "Ranked training images", timeout=180)
    settle(page)
    assert "Remove nothing by this ranking" in page.inner_text("body")  # not checked yet
    review_training_labels(page)


def test_two_browser_sessions_work_at_once_without_mixing(server, browser):
    """Two browser contexts (two users): one turns the demo on, both train and score at the
    same time; ticks, data sets and runs stay with their own session."""
    url, workspace = server
    a = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    b = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    for page in (a, b):
        open_app(page, url)
    assert a.url != b.url  # each has its own session id
    demo_on(a)
    for page in (a, b):  # start both trainings, then wait for both
        go(page, "2 · Train")
        page.get_by_role("combobox", name="Model", exact=True).click()
        page.get_by_role("option", name="logistic regression").click()
        settle(page)
        page.get_by_role("button", name=re.compile("Start training")).click()
    for page in (a, b):
        wait_for_text(page, "Next: find the harmful training images", timeout=180)
        settle(page)
        go(page, "3 · Harmful images")
        page.get_by_text("Fast: last epoch only").click()
        page.get_by_role("button", name=re.compile("^Compute influence")).click()
    for page in (a, b):
        wait_for_text(page, "Ranked training images", timeout=180)
        settle(page)
        no_errors(page)
    a.get_by_role("button", name=re.compile("Tick top 10")).click()
    settle(a)
    b.reload()
    wait_for_text(b, "Ranked training images", timeout=60)
    settle(b)
    body_a, body_b = a.inner_text("body"), b.inner_text("body")
    assert "Ticked: 10 images" in body_a and "Ticked: 0 images" in body_b
    assert "demo: 108 training labels flipped" in body_a
    assert "flipped" not in body_b


def test_why_this_mistake_opens_a_test_image_ticks_from_it_and_shows_its_new_prediction(
        server, browser):
    """Page 4's "why this mistake?": open a misclassified test image, explain it (fast), tick
    the training images that pushed it most, retrain the last epoch, see its new prediction."""
    url, _ = server
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    open_app(page, url)
    go(page, "2 · Train")
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="logistic regression").click()
    settle(page)
    page.get_by_role("button", name=re.compile("Start training")).click()
    wait_for_text(page, "Next: find the harmful training images", timeout=180)
    settle(page)
    go(page, "4 · Retrain and compare")
    wait_for_text(page, "Why this mistake?")
    page.get_by_text("fast, last epoch only").click()
    settle(page)
    page.get_by_role("button", name=re.compile("Explain this mistake")).click()
    wait_for_text(page, "Pushed it towards this mistake", timeout=180)
    settle(page)
    no_errors(page)
    page.get_by_role("button", name=re.compile("Tick the 5 that pushed it most")).click()
    settle(page)
    wait_for_text(page, "You ticked 5 images")
    page.get_by_text("only the last epoch without them").click()
    settle(page)
    page.get_by_role("button", name=re.compile("Retrain without the 5 ticked")).click()
    wait_for_text(page, "After the latest retraining", timeout=240)
    settle(page)
    no_errors(page)
    assert re.search(r"the model says \S+ — (now right|still wrong)", page.inner_text("body"))
