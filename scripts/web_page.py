"""The server's web page in a real browser (headless Chromium driven by Selenium): the browser test's driver,
and the README's screenshot.

    python scripts/web_page.py runs/quickstart/best.pt --output docs/images/serve.png

serves the checkpoint on a free local port, types a sentence into the page, translates, hovers one cell of
the attention heatmap and saves a screenshot. Needs Debian's chromium and chromium-driver (.ci/run installs
them) and the [test] extra (selenium).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What the machine's closed network needs: no background connections, no first-run, no sandbox as root.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
log = logging.getLogger("web_page")
EXAMPLE_SENTENCE = "Y dijo Dios: Sea la luz; y fue la luz."


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when either is missing."""
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def open_browser(width: int = 1200, height: int = 1000) -> Any:
    """A headless Chromium driven by Selenium, with a fresh profile; raises RuntimeError when none is installed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError("no chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in CHROMIUM_FLAGS + (f"--window-size={width},{height}", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(found[1]))


@dataclass
class PageResult:
    """What the page shows after a translation."""

    translations: list[str]  # the hypotheses' texts, best first
    source_pieces: list[str]  # the heatmap's column headers
    output_pieces: list[str]  # its row headers
    weights: list[list[float]]  # each row's cells (the attention the page drew)


def translate_on_page(
    driver: Any, url: str, sentence: str, timeout: float = 60, api_key: str | None = None
) -> PageResult:
    """Open the page at `url` (typing `api_key` when given), type `sentence`, press Translate and read the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    if api_key is not None:
        WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.ID, "api-key").is_displayed())
        driver.find_element(By.ID, "api-key").send_keys(api_key)
    else:
        WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.ID, "languages").text)  # the card came
    source = driver.find_element(By.ID, "source")
    source.clear()
    source.send_keys(sentence)
    driver.find_element(By.ID, "translate").click()
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr") or d.find_element(By.ID, "error").text
    )
    error = driver.find_element(By.ID, "error").text
    if error:
        raise RuntimeError(f"the page says: {error}")
    rows = driver.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr")
    return PageResult(
        [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#hypotheses .text")],
        [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#heatmap th.src-piece")],
        [row.find_element(By.CSS_SELECTOR, "th.out-piece").text for row in rows],
        [
            [float(cell.get_attribute("data-weight")) for cell in row.find_elements(By.CSS_SELECTOR, "td.cell")]
            for row in rows
        ],
    )


def hover_strongest_cell(driver: Any) -> str:
    """Move the mouse over the first output piece's most attended cell; returns the page's line about it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr:first-child td.cell")
    strongest = max(cells, key=lambda cell: float(cell.get_attribute("data-weight")))
    ActionChains(driver).move_to_element(strongest).perform()
    return driver.find_element(By.ID, "cell-info").text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="e.g. runs/quickstart/best.pt (the README's first command makes it)")
    parser.add_argument("--sentence", default=EXAMPLE_SENTENCE)
    parser.add_argument("--output", default="docs/images/serve.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from seq2seq.errors import UserError
    from seq2seq.server import create_app, serving_in_thread
    from seq2seq.translate import Translator

    try:
        translator = Translator(args.checkpoint, device="cpu")
    except UserError as exc:
        print(f"web_page.py: error: {exc}", file=sys.stderr)
        return 2
    driver = open_browser(1200, 1480)  # the page, the heatmap and the model card
    try:
        with serving_in_thread(create_app(translator)) as url:
            shown = translate_on_page(driver, url + "/", args.sentence)
            info = hover_strongest_cell(driver)
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.output)
    finally:
        driver.quit()
    log.info("%s -> %s (%s); screenshot: %s", args.sentence, shown.translations[0], info, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
