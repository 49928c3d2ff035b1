"""The web page in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by Selenium)
opens the page served by a real uvicorn, translates a sentence and shows its attention.

Under CI=true a missing browser fails the test (.ci/run installs one); elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import web_page

from seq2seq.server import create_app, serving_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if web_page.find_chromium() is None:
        reason = "no chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}; .ci/run installs them")
        pytest.skip(reason)
    driver = web_page.open_browser()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_url(translator):
    with serving_in_thread(create_app(translator)) as url:
        yield url + "/"


def test_the_page_translates_and_draws_one_row_per_output_piece_and_one_column_per_source_piece(
    browser, page_url, translator, corpus
):
    sentence = corpus[0][3]
    shown = web_page.translate_on_page(browser, page_url, sentence)
    expected = translator.translate([sentence], beam=5, n_best=3)[0]  # the page asks for beam 5, n-best 3

    assert shown.translations == [c.text for c in expected.hypotheses]
    assert shown.translations[0] == corpus[1][3]  # the toy model learnt its dev set
    assert shown.source_pieces == expected.source_pieces
    assert shown.output_pieces == expected.best.pieces
    assert [len(row) for row in shown.weights] == [len(expected.source_pieces)] * len(expected.best.pieces)
    drawn = torch.tensor(shown.weights)  # what the cells carry: the API's matrix (rounded to 4 places)
    torch.testing.assert_close(drawn, expected.best.attention.float(), atol=1e-4, rtol=0)


def test_hovering_a_cell_names_its_pieces_and_highlights_its_row_and_column(browser, page_url, corpus):
    from selenium.webdriver.common.by import By

    shown = web_page.translate_on_page(browser, page_url, corpus[0][5])
    info = web_page.hover_strongest_cell(browser)

    assert info.startswith(f"{shown.output_pieces[0]} <- ")
    hot_rows = browser.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr.hot")
    assert len(hot_rows) == 1 and hot_rows[0].find_element(By.CSS_SELECTOR, "th").text == shown.output_pieces[0]
    hot_header = browser.find_elements(By.CSS_SELECTOR, "#heatmap th.src-piece.hot")
    assert len(hot_header) == 1 and info.split(" <- ")[1].startswith(hot_header[0].text)


def test_choosing_another_hypothesis_redraws_the_heatmap_for_it(browser, page_url, translator, corpus):
    from selenium.webdriver.common.by import By

    sentence = corpus[0][7]
    web_page.translate_on_page(browser, page_url, sentence)
    expected = translator.translate([sentence], beam=5, n_best=3)[0].hypotheses[2]
    browser.find_elements(By.CSS_SELECTOR, "#hypotheses .hypothesis")[2].click()

    rows = browser.find_elements(By.CSS_SELECTOR, "#heatmap tbody th.out-piece")
    assert [row.text for row in rows] == expected.pieces
    assert "chosen" in browser.find_elements(By.CSS_SELECTOR, "#hypotheses .hypothesis")[2].get_attribute("class")


def test_a_server_with_a_key_asks_for_it_and_the_page_translates_once_given(browser, translator, corpus):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with serving_in_thread(create_app(translator, api_key="s3cret")) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
        assert "Authorization: Bearer" in browser.find_element(By.ID, "error").text  # the 401's one line
        assert browser.find_element(By.ID, "api-key").is_displayed()

        shown = web_page.translate_on_page(browser, url + "/", corpus[0][1], api_key="s3cret")

    assert shown.translations[0] == corpus[1][1]
