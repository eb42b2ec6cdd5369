"""The page at / in a real headless browser (Debian's chromium, driven by Selenium through
chromedriver) against the whole session service: gunicorn, the Celery worker, Redis, a trained model.

It opens with a customer's recommendations and their own rated products already shown; every
recommendation has a photo, a title, a predicted rating and a reason; "similar" lists the products
the similar-products API gives; a rate button posts feedback and the lists change at once. The
screenshots are written to test-artifacts/ (git-ignored) at the repository root.
"""

from __future__ import annotations

import shutil
import uuid

import pytest

from ml.config import REPO_ROOT

pytestmark = pytest.mark.service

ARTIFACTS = REPO_ROOT / "test-artifacts"
WAIT_S = 60


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Debian's chromium and chromium-driver packages (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1100",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    yield browser
    browser.quit()


def _wait(browser, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(lambda b: condition(b), message=what)


def _ids(browser, selector: str) -> list[str]:
    return [e.get_attribute("data-product") for e in browser.find_elements("css selector", selector)]


def _status(browser) -> str:
    return browser.find_element("id", "status").text


def _screenshot(browser, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert browser.save_screenshot(str(path)), path
    print(f"screenshot: {path}")


def test_page_opens_with_recommendations_and_the_customers_own_ratings(live, browser):
    browser.get(live.url + "/")
    _wait(browser, lambda b: _ids(b, "#recs .rec") and _status(b).startswith("model "), "recommendations")
    customer = browser.find_element("id", "customer").get_attribute("value")
    assert customer == live.get("/customers?limit=1").json()["customers"][0]  # the first known customer

    api = live.get(f"/recommendation?customer_id={customer}&top=10").json()
    assert _ids(browser, "#recs .rec") == [x["product_id"] for x in api["items"]]
    rated = live.get(f"/customers/{customer}/rated?limit=50").json()
    assert rated["known"] and rated["items"]
    assert _ids(browser, "#rated .rated-item") == [x["product_id"] for x in rated["items"]]

    cards = browser.find_elements("css selector", "#recs .rec")
    for card, item in zip(cards, api["items"]):
        text = card.text
        assert item["title"] and item["title"] in text
        assert f"predicted {item['predicted_rating']:.2f}" in text
        assert card.find_element("css selector", "img").get_attribute("naturalWidth") not in (None, "0")
        assert (
            card.find_element("css selector", ".similar")
            and len(card.find_elements("css selector", ".rate")) == 5
        )
    reasons = [c.find_element("css selector", ".why").text for c in cards]
    supported = [x for x in api["items"] if x["because"]["products"]]
    assert supported, "the first customer's picks should have reasons"
    for card_reason, item in zip(reasons, api["items"]):
        for p in item["because"]["products"]:
            assert card_reason.startswith("because you liked") and p["title"] in card_reason
    _screenshot(browser, "page.png")


def test_similar_link_shows_the_products_the_api_gives(live, browser):
    browser.get(live.url + "/")
    _wait(browser, lambda b: _ids(b, "#recs .rec"), "recommendations")
    first = browser.find_element("css selector", "#recs .rec")
    product = first.get_attribute("data-product")
    first.find_element("css selector", ".similar").click()
    _wait(
        browser,
        lambda b: b.find_element("id", "similar").is_displayed() and _ids(b, "#similar-items .card"),
        "similar products",
    )
    api = live.get(f"/products/{product}/similar?top=6").json()
    assert _ids(browser, "#similar-items .card") == [x["product_id"] for x in api["items"]]
    assert product not in _ids(browser, "#similar-items .card")


def test_rating_on_the_page_makes_a_new_shopper_known_at_once(live, browser):
    """A shopper the model has never seen gets cold-start picks and no ratings; one click on "5"
    posts feedback, and the same page then lists the rated product under their ratings, no longer
    recommends it, and serves personalised (hybrid) picks."""
    shopper = f"page-{uuid.uuid4().hex[:10]}"
    browser.get(f"{live.url}/?customer={shopper}")
    _wait(browser, lambda b: _ids(b, "#recs .rec") and _status(b).startswith("model "), "cold-start picks")
    assert "cold start" in browser.find_element("id", "recs-title").text
    assert _ids(browser, "#rated .rated-item") == []
    assert all("popular" in e.text for e in browser.find_elements("css selector", "#recs .why"))
    before = _ids(browser, "#recs .rec")

    card = browser.find_element("css selector", "#recs .rec")
    product = card.get_attribute("data-product")
    card.find_element("css selector", ".rate[data-rating='5']").click()
    _wait(
        browser,
        lambda b: _ids(b, "#rated .rated-item") == [product] and "rated" in _status(b),
        "the rating listed",
    )
    assert "5 ★" in _status(browser)
    assert product not in _ids(browser, "#recs .rec") and _ids(browser, "#recs .rec") != before
    assert "cold start" not in browser.find_element("id", "recs-title").text
    api = live.get(f"/recommendation?customer_id={shopper}&top=10").json()
    assert api["cold_start"] is False and {x["strategy"] for x in api["items"]} == {"hybrid"}
    assert _ids(browser, "#recs .rec") == [x["product_id"] for x in api["items"]]
    _screenshot(browser, "page-after-rating.png")
