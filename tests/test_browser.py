"""The chat app in a real browser: headless Chromium (Debian's ``chromium``, or ``GSVA_CHROMIUM``) driven by
Playwright, on the shipped default model.

A newcomer's path: click an example, ask, watch the answer stream in, see the masks and the legend, download the
answer, ask a follow-up; a second user's conversation stays their own. The screenshot of the first answer goes to
the test's folder and, with ``GSVA_SCREENSHOT=PATH`` set, to PATH too (docs/app.png is made that way). Skipped, with the reason printed,
where Playwright or Chromium is missing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Records the assistant's message each time the chat changes, so the test can see the answer grow.
RECORD_CHAT = """() => {
  window.gsvaChat = [];
  const chat = document.querySelector('#gsva-chat');
  new MutationObserver(() => {
    const bots = chat.querySelectorAll('[data-testid="bot"]');
    if (bots.length) window.gsvaChat.push(bots[bots.length - 1].innerText);
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def _chromium() -> str | None:
    return os.environ.get("GSVA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium; or set GSVA_CHROMIUM to its path)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=FLAGS, headless=True)
        yield b
        b.close()


def _examples() -> list[dict]:
    return json.loads((REPO / "gsva" / "assets" / "examples" / "examples.json").read_text())


def _open_example(browser, app_url: str, k: int, height: int = 1100):
    """A new page of the app with example ``k`` (its image and first question) filled in and its image shown."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(app_url)
    page.wait_for_selector("#gsva-examples")
    page.locator(f"[data-testid='dataset-cell-{k}-1']").click()
    page.wait_for_selector("#gsva-image img")
    page.wait_for_timeout(300)
    return page


def _ask(page, question: str | None = None) -> None:
    if question is not None:
        page.locator("#gsva-question textarea").fill(question)
    page.evaluate(RECORD_CHAT)
    page.locator("#gsva-ask").click()


def _wait_answer(page, messages: int) -> str:
    """Wait until the chat holds ``messages`` messages and the last answer is complete (the app adds its found / not
    found lines to the answer only with the masks), then return the chat's text."""
    page.wait_for_function(
        """n => {
          const all = document.querySelectorAll('#gsva-chat [data-testid="bot"], #gsva-chat [data-testid="user"]');
          if (all.length < n) return false;
          const last = all[all.length - 1].innerText;
          return /Found: |Not found in the image: |\\(the answer contains no/.test(last);
        }""", arg=messages, timeout=120_000)
    page.wait_for_timeout(300)
    return page.locator("#gsva-chat").inner_text()


def _legend(page) -> list[list[str]]:
    rows = page.locator("#gsva-legend tbody tr")
    return [rows.nth(i).locator("td").all_inner_texts()[1:] for i in range(rows.count())]


def test_a_newcomer_clicks_an_example_asks_downloads_and_follows_up(browser, app_url, tmp_path):
    from pycocotools import mask as mask_utils

    first = _examples()[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_url)
    page.wait_for_selector("#gsva-examples")
    assert "gsva-smol" in page.locator("#gsva-model").inner_text()  # the model panel
    page.locator("[data-testid='dataset-cell-0-1']").click()  # the first example: its image and question
    page.wait_for_function("q => document.querySelector('#gsva-question textarea').value === q",
                           arg=first["questions"][0], timeout=10_000)
    page.wait_for_selector("#gsva-image img")
    _ask(page)
    chat = _wait_answer(page, 2)

    # the answer streamed: the chat showed a growing prefix of the final answer before it was complete
    states = [s.strip() for s in page.evaluate("window.gsvaChat") if s.strip() and s.strip() != "…"]
    answer_text = chat.split(first["questions"][0], 1)[1].strip().splitlines()[0]
    partial = {s for s in states if answer_text.startswith(s) and len(s) < len(answer_text)}
    assert partial, f"no partial answer was shown before the whole one; chat states: {states}"

    # the legend names the three asked phrases, in the answer's order, each found or not in the image
    legend = _legend(page)
    asked = first["questions"][0][len("What are "):-len(" in this image?")].split(", ")
    assert sorted(row[0] for row in legend) == sorted(asked)
    assert {row[1] for row in legend} <= {"found", "not in the image", "found, empty mask"}
    found = [row[0] for row in legend if row[1] == "found"]
    overlay = page.locator("#gsva-overlay img")
    assert overlay.count() == 1 and overlay.get_attribute("src")
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    if os.environ.get("GSVA_SCREENSHOT"):
        shutil.copy(shot, os.environ["GSVA_SCREENSHOT"])

    # downloads: result.json (COCO RLE) and one PNG per found mask, at the image's size
    links = page.locator("#gsva-downloads a[download]")
    names = [links.nth(i).get_attribute("download") for i in range(links.count())]
    assert names == ["result.json"] + [f"mask_{k}.png" for k in range(len(found))]
    record = json.loads(page.request.get(links.nth(0).get_attribute("href")).body())
    scene = Image.open(REPO / "gsva" / "assets" / "examples" / first["image"])
    assert record["image"] == {"height": scene.height, "width": scene.width}
    assert [t["phrase"] for t in record["targets"]] == [row[0] for row in legend]
    if found:
        (tmp_path / "mask_0.png").write_bytes(page.request.get(links.nth(1).get_attribute("href")).body())
        png = np.asarray(Image.open(tmp_path / "mask_0.png"))
        seg = next(t for t in record["targets"] if t["mask"] == "mask_0.png")["segmentation"]
        rle = dict(seg, counts=seg["counts"].encode())
        assert png.shape == (scene.height, scene.width) and ((png == 255) == mask_utils.decode(rle).astype(bool)).all()

    # a second user asks about another example; the first user's conversation is untouched by it
    other = _open_example(browser, app_url, 1)
    _ask(other)
    other_chat = _wait_answer(other, 2)
    assert _examples()[1]["questions"][0] in other_chat and first["questions"][0] not in other_chat
    other.close()

    # the follow-up keeps the conversation
    follow_up = first["questions"][1]
    _ask(page, follow_up)
    chat = _wait_answer(page, 4)
    assert first["questions"][0] in chat and follow_up in chat and _examples()[1]["questions"][0] not in chat
    assert len(_legend(page)) >= 1
    page.screenshot(path=str(tmp_path / "follow_up.png"), full_page=True)

    # "New conversation" clears the chat, the masks, the legend and the downloads
    page.locator("#gsva-new").click()
    page.wait_for_function("() => !document.querySelector('#gsva-legend table')", timeout=10_000)
    assert first["questions"][0] not in page.locator("#gsva-chat").inner_text()
    assert page.locator("#gsva-downloads a[download]").count() == 0

    # ... and so does another image: a new conversation about it
    _ask(page, first["questions"][0])
    assert first["questions"][0] in _wait_answer(page, 2)
    page.locator("[data-testid='dataset-cell-1-1']").click()  # the second scene's example
    page.wait_for_function("() => !document.querySelector('#gsva-legend table')", timeout=10_000)
    assert first["questions"][0] not in page.locator("#gsva-chat").inner_text()
    page.close()


def test_bad_input_shows_a_message_not_a_traceback(browser, app_url, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.wait_for_selector("#gsva-ask")
    page.locator("#gsva-question textarea").fill("What are the red circle in this image?")
    page.locator("#gsva-ask").click()  # no image yet
    page.wait_for_selector("text=Upload an image first", timeout=20_000)
    page.locator("[data-testid='dataset-cell-0-1']").click()
    page.wait_for_selector("#gsva-image img")
    page.locator("#gsva-question textarea").fill("   ")
    page.locator("#gsva-ask").click()
    page.wait_for_selector("text=empty", timeout=20_000)
    assert "Traceback" not in page.content()
    page.close()


# Where pixel (x, y) of the image (``width`` pixels wide) lies on the page. The app shows small images enlarged; the
# <img> is centred in its box, shrunk to fit and never enlarged (gradio's ImagePreview maps a click
# back to the shown image's pixels the same way).
IMAGE_POINT = """([sel, x, y, width]) => {
  const img = document.querySelector(sel);
  const r = img.getBoundingClientRect();
  const k = img.naturalWidth / width;
  const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 1);
  return [r.left + (r.width - img.naturalWidth * s) / 2 + (x + 0.5) * k * s,
          r.top + (r.height - img.naturalHeight * s) / 2 + (y + 0.5) * k * s];
}"""


def _fetch(page, name: str, path: Path, where: str = "#gsva-downloads") -> bool:
    """Save the download called ``name`` (of the file box ``where``) to ``path``; False when there is none."""
    links = page.locator(f"{where} a[download]")
    for i in range(links.count()):
        if links.nth(i).get_attribute("download") == name:
            path.write_bytes(page.request.get(links.nth(i).get_attribute("href")).body())
            return True
    return False


def _download(page, name: str, path: Path, where: str = "#gsva-downloads") -> np.ndarray | None:
    """The downloaded mask PNG ``name`` as (H, W) bool, or None when there is none."""
    return np.asarray(Image.open(path)) == 255 if _fetch(page, name, path, where) else None


def _click_image(page, x: float, y: float, width: int, status: str) -> None:
    """Click pixel (x, y) of the masks' image and wait until the refinement status matches the regex ``status``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_function("() => { const i = document.querySelector('#gsva-overlay img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
    page.locator("#gsva-overlay img").scroll_into_view_if_needed()  # page coordinates of a visible image
    px, py = page.evaluate(IMAGE_POINT, ["#gsva-overlay img", float(x), float(y), width])
    page.mouse.click(px, py)
    try:
        page.wait_for_function("re => new RegExp(re).test(document.querySelector('#gsva-refine-status').innerText)",
                               arg=status, timeout=60_000)
    except PlaywrightTimeout:
        toasts = page.locator(".toast-body").all_inner_texts()
        raise AssertionError(f"after a click at image pixel ({x}, {y}), page ({px:.0f}, {py:.0f}): status "
                             f"{_status(page)!r}, messages {toasts}") from None
    page.wait_for_timeout(300)


def _status(page) -> str:
    return page.locator("#gsva-refine-status").inner_text()


def test_a_user_fixes_a_mask_with_clicks_and_undoes_one(browser, app_url, tmp_path):
    """Issue #15 in the app: the first found target is chosen for refinement; a negative click inside its mask
    changes the mask (overlay, downloads), undo restores it; a positive click on a new object starts a mask."""
    import cv2

    def distance_transform_edt(mask):  # distance of each pixel inside ``mask`` to its nearest outside pixel
        return cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]

    page = _open_example(browser, app_url, 0, height=1200)
    _ask(page)
    _wait_answer(page, 2)
    found = [row[0] for row in _legend(page) if row[1] == "found"]
    assert found, "the example's answer found nothing to refine"
    before = _download(page, "mask_0.png", tmp_path / "before.png")
    assert "Refining" in _status(page) and found[0] in _status(page)

    # a negative click at the pixel deepest inside the first found mask
    depth = distance_transform_edt(before)
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    page.locator("#gsva-click-mode").get_by_text("negative click").click()
    _click_image(page, x, y, before.shape[1], "0 positive, 1 negative")
    assert _fetch(page, "result.json", tmp_path / "r.json")
    record = json.loads((tmp_path / "r.json").read_text())
    (cx, cy), = record["targets"][0]["refinement"]["points"]  # the click reached the model where it was made
    assert abs(cx - (x + 0.5)) <= 1 and abs(cy - (y + 0.5)) <= 1 and record["targets"][0]["refinement"]["labels"] == [0]
    after = _download(page, "mask_0.png", tmp_path / "after.png")
    assert after.shape == before.shape and (after != before).any(), "the negative click did not change the mask"
    shot = tmp_path / "refined.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("GSVA_REFINE_SCREENSHOT"):
        shutil.copy(shot, os.environ["GSVA_REFINE_SCREENSHOT"])

    # undo: the mask is the answer's again
    page.locator("#gsva-undo").click()
    page.wait_for_function("() => /0 positive, 0 negative/.test(document.querySelector('#gsva-refine-status').innerText)",
                           timeout=30_000)
    page.wait_for_timeout(300)
    assert (_download(page, "mask_0.png", tmp_path / "undone.png") == before).all()

    # a new object from one positive click, where no found mask lies
    page.locator("#gsva-refine-target input").click()
    page.get_by_role("option", name="a new object (from clicks only)").click()
    page.wait_for_function("() => /new object/.test(document.querySelector('#gsva-refine-status').innerText)",
                           timeout=30_000)
    covered = np.zeros_like(before)
    for k in range(len(found)):
        covered |= _download(page, f"mask_{k}.png", tmp_path / f"m{k}.png")
    free = distance_transform_edt(~covered)
    y, x = np.unravel_index(int(free.argmax()), free.shape)
    page.locator("#gsva-click-mode").get_by_text("positive click").click()
    _click_image(page, x, y, before.shape[1], "1 positive, 0 negative")
    new = _download(page, f"mask_{len(found)}.png", tmp_path / "new.png")
    assert new is not None and new.shape == before.shape
    assert _legend(page)[-1][0] == "object from clicks"
    assert "Traceback" not in page.content()
    page.close()


def test_a_user_segments_things_like_an_example(browser, app_url, tmp_path, first_like_task):
    """Issue #16 in the app: the "Segment by example" tab; a click on the first example row fills the example, its
    mask and the target; the mask offered for download covers the example's kind in the target."""

    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_url)
    page.get_by_role("tab", name="Segment by example").click()
    page.wait_for_selector("#gsva-like-examples")
    page.locator("#gsva-like-examples [data-testid='dataset-cell-0-0']").click()
    page.wait_for_selector("#gsva-like-target img")
    page.wait_for_timeout(300)
    page.locator("#gsva-like-run").click()
    page.wait_for_function("() => /Found|Nothing/.test(document.querySelector('#gsva-like-status').innerText)",
                           timeout=120_000)
    page.wait_for_timeout(300)
    assert "Found" in page.locator("#gsva-like-status").inner_text()
    mask = _download(page, "mask.png", tmp_path / "mask.png", "#gsva-like-downloads")
    truth = first_like_task.mask  # what app/make_examples.py drew as the first example row
    assert mask is not None and mask.shape == truth.shape
    assert (mask & truth).sum() / (mask | truth).sum() > 0.5
    assert _fetch(page, "result.json", tmp_path / "r.json", "#gsva-like-downloads")
    assert json.loads((tmp_path / "r.json").read_text())["kind"] == "segment_like"
    shot = tmp_path / "like.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("GSVA_LIKE_SCREENSHOT"):
        shutil.copy(shot, os.environ["GSVA_LIKE_SCREENSHOT"])
    assert "Traceback" not in page.content()
    page.close()
