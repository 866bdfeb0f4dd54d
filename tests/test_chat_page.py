"""The chat page (`/`) in a real browser — Debian's Chromium driven by Playwright — against the real
HTTP API and a Serve deployment of a tiny model: the key, the model list, a streamed answer, a 401
shown in the page, and "clear". A screenshot is left in test-artifacts/chat_page.png."""
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

# In the page: note every length the last assistant message's text has while it is still streaming,
# both on each DOM change and on a fast timer, so that "it grew over time" is observed, not assumed.
WATCH_STREAM = """() => {
  window.__lengths = [];
  const note = () => {
    const all = document.querySelectorAll('#messages .msg.assistant');
    const last = all[all.length - 1];
    if (!last || last.dataset.done === 'true') return;
    const n = last.querySelector('.text').textContent.length;
    if (window.__lengths[window.__lengths.length - 1] !== n) window.__lengths.push(n);
  };
  new MutationObserver(note).observe(document.getElementById('messages'),
                                     {subtree: true, childList: true, characterData: true});
  setInterval(note, 5);
}"""


@pytest.fixture
def page():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian's chromium package; `python3 dev.py test` installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            pg = context.new_page()
            pg.set_default_timeout(30_000)
            yield pg
        finally:
            browser.close()


def test_chat_page_streams_an_answer_shows_a_401_and_clears(api_server, api_model, page):
    from playwright.sync_api import expect

    console_errors = []
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.goto(api_server.url + "/")

    # Without a key the model list is refused, and the page says so next to the key field.
    expect(page.locator("#key-notice")).to_be_visible()
    expect(page.locator("#key-notice")).to_contain_text("needs an API key")

    page.fill("#api-key", api_server.api_key)
    page.locator(f'#model option[value="{api_model}"]').wait_for(state="attached")
    page.select_option("#model", api_model)
    expect(page.locator("#key-notice")).to_be_hidden()
    page.fill("#max-tokens", "200")
    page.fill("#system", "You are a test.")

    page.evaluate(WATCH_STREAM)
    page.fill("#input", "Tell me a long story.")
    page.click("#send")
    expect(page.locator("#messages .msg.user")).to_have_count(1)
    expect(page.locator("#messages .msg.user")).to_contain_text("Tell me a long story.")
    answer = page.locator("#messages .msg.assistant").last
    expect(answer).to_have_attribute("data-done", "true", timeout=120_000)

    text = answer.locator(".text").text_content()
    lengths = page.evaluate("window.__lengths")
    growing = sorted({n for n in lengths if n > 0})
    assert text.strip(), "the streamed answer is empty"
    assert len(growing) >= 2, f"the answer did not grow while streaming: lengths seen {lengths}"
    assert growing == [n for n in lengths if n > 0], f"the answer shrank while streaming: {lengths}"
    assert max(growing) <= len(text)
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#messages .msg.error")).to_have_count(0)

    # A wrong key: the server's 401 message appears in the conversation, and the key field is flagged.
    page.fill("#api-key", "not-the-key")
    page.fill("#input", "Hello again")
    page.press("#input", "Enter")
    error = page.locator("#messages .msg.error")
    expect(error).to_have_count(1)
    expect(error).to_contain_text("the API key is not valid")
    expect(page.locator("#key-box")).to_have_class("field key-box needs-key")
    expect(page.locator("#key-notice")).to_be_visible()
    expect(page.locator("#input")).to_have_value("Hello again")  # offered again, to resend with a good key

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_page.png"), full_page=True)

    page.click("#clear")
    expect(page.locator("#messages .msg")).to_have_count(0)
    assert page.locator("#messages").inner_html().strip() == ""
    assert not console_errors, console_errors
