"""The chat page served at / driven in a real headless browser (Debian's chromium via selenium).

The page must show, streamed in, exactly the answer the API gives non-streamed to the same request
with greedy decoding: the same messages (the attached image as the same data: URL, earlier turns
included), so a test builds that request by hand and compares. Skipped when chromium or
chromedriver is not installed (`apt-get install -y chromium chromium-driver`; CI installs them).
"""

import base64
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MAX_TOKENS = 12
WAIT_S = 15

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or not Path(CHROMEDRIVER).exists(),
    reason="needs Debian's chromium and chromedriver: apt-get install -y chromium chromium-driver",
)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    # an explicit driver path keeps Selenium Manager (which would go online) out of it
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def chat_page(browser, server_url):
    """The page freshly loaded, its model list read, answers capped at MAX_TOKENS."""
    browser.get(f"{server_url}/")
    WebDriverWait(browser, WAIT_S).until(
        lambda driver: (
            driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"
        )
    )
    browser.find_element(By.CSS_SELECTOR, "#settings summary").click()
    browser.find_element(By.ID, "max-tokens").send_keys(str(MAX_TOKENS))
    return browser


def api_answer(server_url: str, messages: list[dict]) -> dict:
    """POST the request the page makes, but non-streamed; the decoded JSON body (or error body)."""
    body = {"model": model_id(server_url), "messages": messages, "temperature": 0}
    body["max_tokens"] = MAX_TOKENS
    request = urllib.request.Request(
        f"{server_url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        return json.load(error)


def model_id(server_url: str) -> str:
    with urllib.request.urlopen(f"{server_url}/v1/models", timeout=WAIT_S) as response:
        return json.load(response)["data"][0]["id"]


def write_png(path: Path) -> str:
    """A small two-colour PNG at `path`; returns its data: URL."""
    image = Image.new("RGB", (40, 32), (200, 30, 30))
    image.paste((20, 20, 220), (0, 0, 20, 32))
    image.save(path)
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def send(page, text: str) -> None:
    page.find_element(By.ID, "message").send_keys(text)
    page.find_element(By.ID, "send").click()


def finished_answer(page, number: int):
    """The number-th answer (1-based) once its stream has ended ([DONE] or an error)."""
    selector = f".message.assistant:nth-of-type({2 * number})"

    def state(driver):
        answers = driver.find_elements(By.CSS_SELECTOR, selector)
        if answers and answers[0].get_attribute("data-state") in ("done", "error"):
            return answers[0]
        return False

    answer = WebDriverWait(page, WAIT_S).until(state)
    error = page.find_element(By.ID, "error").get_attribute("textContent")
    assert answer.get_attribute("data-state") == "done", f"the page shows an error: {error}"
    assert not page.find_element(By.ID, "send").get_attribute("disabled")
    return answer


def shown_text(answer) -> str:
    return answer.find_element(By.CSS_SELECTOR, ".content").get_attribute("textContent")


def test_streamed_answer_with_an_image_equals_the_api_answer_and_a_second_turn_too(
    chat_page, server_url, tmp_path
):
    data_url = write_png(tmp_path / "picture.png")
    chat_page.find_element(By.ID, "image-input").send_keys(str(tmp_path / "picture.png"))
    WebDriverWait(chat_page, WAIT_S).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "#image-preview img")
    )
    send(chat_page, "What is in this picture?")
    first = finished_answer(chat_page, 1)

    # the page read the file into the very data: URL the API request below carries
    sent_image = chat_page.find_element(By.CSS_SELECTOR, ".message.user .images img")
    assert sent_image.get_attribute("src") == data_url
    assert not chat_page.find_elements(By.CSS_SELECTOR, "#image-preview img")

    first_turn = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "text", "text": "What is in this picture?"},
        ],
    }
    expected = api_answer(server_url, [first_turn])["choices"][0]["message"]["content"]
    assert expected
    assert shown_text(first) == expected
    assert int(first.get_attribute("data-chunks")) > 1, "the answer came in one piece"

    send(chat_page, "And the colours?")
    second = finished_answer(chat_page, 2)
    messages = [
        first_turn,
        {"role": "assistant", "content": expected},
        {"role": "user", "content": "And the colours?"},
    ]
    expected = api_answer(server_url, messages)["choices"][0]["message"]["content"]
    assert shown_text(second) == expected


def test_an_api_error_is_shown_on_the_page_and_the_turn_left_out(chat_page, server_url):
    too_long = 10**9  # prompt + max_tokens over any context: the server answers 400
    chat_page.find_element(By.ID, "max-tokens").clear()
    chat_page.find_element(By.ID, "max-tokens").send_keys(str(too_long))
    send(chat_page, "Hello")

    def error_shown(driver):
        return driver.find_element(By.ID, "error").get_attribute("textContent")

    shown = WebDriverWait(chat_page, WAIT_S).until(error_shown)
    answer = chat_page.find_element(By.CSS_SELECTOR, ".message.assistant")
    assert answer.get_attribute("data-state") == "error"

    body = {
        "model": model_id(server_url),
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": too_long,
    }
    request = urllib.request.Request(
        f"{server_url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=WAIT_S)
    assert refused.value.code == 400
    assert shown == json.load(refused.value)["error"]["message"]

    # the refused turn is not part of the conversation: the next one is sent alone and answered
    chat_page.find_element(By.ID, "max-tokens").clear()
    chat_page.find_element(By.ID, "max-tokens").send_keys(str(MAX_TOKENS))
    send(chat_page, "Hello")
    answer = finished_answer(chat_page, 2)
    expected = api_answer(server_url, [{"role": "user", "content": "Hello"}])
    assert shown_text(answer) == expected["choices"][0]["message"]["content"]
    assert not chat_page.find_element(By.ID, "error").get_attribute("textContent")
