"""The card viewer in headless Chromium: examples, hooks, the questionnaire form, feedback, safety.

Needs Debian's `chromium` and `chromium-driver` (skips with that reason where they are missing).
Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import ROOT
from tests.live import LiveServer, live_app, serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
FEEDBACK_PATH = "/cds-services/twitching-red-flags/feedback"
NARROW = 380  # an EHR sidebar is about this wide
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "headless Chromium is not installed (apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )


class FeedbackRecorder:
    """WSGI middleware: records feedback posts and can stand in for a service without the endpoint."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.posts: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.absent = False

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Record a feedback body; answer 404 as the service does for an unknown path when absent."""
        if environ["PATH_INFO"] != FEEDBACK_PATH or environ["REQUEST_METHOD"] != "POST":
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        self.posts.append(json.loads(body))
        if self.absent:
            self.statuses.append(404)
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "not-found",
                           "diagnostics": f"no such endpoint: {FEEDBACK_PATH}"}],
            }  # fmt: skip
            start_response("404 NOT FOUND", [("Content-Type", "application/fhir+json")])
            return [json.dumps(outcome).encode()]
        import io

        environ["wsgi.input"] = io.BytesIO(body)

        def recording_start(status: str, headers: Any, exc_info: Any = None) -> Any:
            self.statuses.append(int(status.split()[0]))
            return start_response(status, headers, exc_info)

        return self.app(environ, recording_start)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def recorder() -> FeedbackRecorder:
    """The app behind the feedback recorder."""
    return FeedbackRecorder(live_app())


@pytest.fixture(scope="module")
def server(recorder: FeedbackRecorder) -> Iterator[LiveServer]:
    """The service on loopback."""
    with serve(recorder) as live:
        yield live


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile, driven through Debian's chromedriver (no downloads)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: webdriver.Chrome, server: LiveServer, recorder: FeedbackRecorder) -> Iterator[WebDriver]:
    """The viewer freshly loaded and ready; afterwards, no Content-Security-Policy violation logged."""
    recorder.absent = False
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.get(server.url + "/")
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    yield browser
    logs = browser.get_log("browser")  # type: ignore[no-untyped-call]  # selenium leaves it unannotated
    violations = [e["message"] for e in logs if "Content Security Policy" in e["message"]]
    assert not violations, violations
    # An HTTP error status is an expected answer here (422, 404), not a script error.
    errors = [
        e["message"] for e in logs if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]
    assert not errors, errors


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 15) -> Any:
    """Wait for condition; on time-out, fail with the page's status line."""
    try:
        return WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        status = driver.find_element(By.ID, "status").text
        pytest.fail(f"timed out; the page's status says: {status!r}")


def screenshot(driver: WebDriver, name: str, width: int = 1280, height: int = 1000, top: str = "") -> Path:
    """Save a PNG of the viewport under test-artifacts/browser/, scrolled to element `top` if given."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    if top:
        driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", top)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    driver.execute_script("window.scrollTo(0, 0)")
    assert path.stat().st_size > 1000
    return path


def cards(driver: WebDriver) -> list[WebElement]:
    """The rendered cards."""
    return driver.find_elements(By.CSS_SELECTOR, "#cards article.card")


def raw(driver: WebDriver, which: str) -> Any:
    """The raw request or response pane, parsed."""
    return json.loads(driver.find_element(By.ID, f"raw-{which}").get_attribute("textContent") or "null")


def choose_example(driver: WebDriver, rule: str, name: str) -> None:
    """Select fhir_examples/<rule>/<name>.json in the example list."""
    option = driver.find_element(By.XPATH, f"//optgroup[@label='{rule}']/option[starts-with(., '{name} ')]")
    Select(driver.find_element(By.ID, "example-select")).select_by_value(option.get_attribute("value") or "")


def send_with_keyboard(driver: WebDriver) -> None:
    """Press the send button from the keyboard, as a keyboard user would."""
    driver.find_element(By.ID, "send-button").send_keys(Keys.ENTER)


def mode(driver: WebDriver, value: str) -> None:
    """Pick what to send: example, paste or form."""
    driver.find_element(By.CSS_SELECTOR, f'input[name="mode"][value="{value}"]').click()


def question(driver: WebDriver, link_id: str, css: str = "") -> WebElement:
    """The first form control of a questionnaire item (or the one matching css among them)."""
    return driver.find_element(By.CSS_SELECTOR, f'#questionnaire [data-link-id="{link_id}"]{css}')


def click(driver: WebDriver, element: WebElement) -> None:
    """Scroll the element to the middle of the view, as a person would, then click it."""
    # chromedriver scrolls only "into view", which can leave it under the sticky send bar.
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def answer_boolean(driver: WebDriver, link_id: str, value: str) -> None:
    """Click the Yes ("true"), No ("false") or Unanswered ("") radio of a boolean item."""
    click(driver, question(driver, link_id, f'[value="{value}"]'))


# --- tests ----------------------------------------------------------------------------------


def test_example_renders_cards_and_the_raw_exchange(page: WebDriver) -> None:
    """Pick an example, send it from the keyboard, see the card as a sidebar would and the raw JSON."""
    choose_example(page, "motor-neuron-red-flags", "fires-weakness")
    assert "weakness: yes" in page.find_element(By.ID, "example-description").text
    send_with_keyboard(page)
    wait(page, lambda d: cards(d))
    card = cards(page)[0]
    assert "card-critical" in (card.get_attribute("class") or "")
    assert card.find_element(By.CSS_SELECTOR, ".indicator").text.lower() == "critical"
    assert "motor red flags" in card.find_element(By.CSS_SELECTOR, ".card-summary").text
    strong = card.find_elements(By.CSS_SELECTOR, ".card-detail li strong")
    assert [s.text for s in strong][:1] == ["yes"], "markdown bold renders as <strong>"
    links = card.find_elements(By.CSS_SELECTOR, ".card-detail a")
    assert links
    assert all((a.get_attribute("href") or "").startswith("https://") for a in links)
    assert all(a.get_attribute("rel") == "noopener noreferrer" for a in links)
    buttons = card.find_elements(By.CSS_SELECTOR, "button.suggestion")
    assert [b.text for b in buttons] == [
        "Order: Referral to neurology (urgent)",
        "Order: EMG with nerve conduction studies (urgent)",
    ]
    assert "Source:" in card.find_element(By.CSS_SELECTOR, ".card-source").text
    assert page.find_element(By.ID, "status").text == "1 card: 1 critical."
    assert page.find_element(By.ID, "status").get_attribute("aria-live") == "polite"
    assert page.find_element(By.ID, "raw-request-line").text == "POST /evaluate (application/fhir+json)"
    assert raw(page, "request")["resourceType"] == "Bundle"
    assert len(raw(page, "response")["cards"]) == 1
    screenshot(page, "example-desktop")
    screenshot(page, "example-sidebar", width=NARROW, height=1100, top="cards-title")


def test_a_bundle_sent_as_a_hook_request(page: WebDriver, server: LiveServer) -> None:
    """Choosing the patient-view hook turns the Bundle into a hook request with every prefetch key."""
    choose_example(page, "case-studies", "fires-sarah-l5-s1")
    select = Select(page.find_element(By.ID, "target-select"))
    select.select_by_visible_text(
        "patient-view: POST /cds-services/twitching-red-flags (Bundle sent as prefetch)"
    )
    send_with_keyboard(page)
    wait(page, lambda d: len(cards(d)) == 3)
    sent = raw(page, "request")
    assert page.find_element(By.ID, "raw-request-line").text.startswith(
        "POST /cds-services/twitching-red-flags"
    )
    discovery = requests.get(server.url + "/cds-services", timeout=10).json()
    keys = next(s["prefetch"] for s in discovery["services"] if s["hook"] == "patient-view")
    assert sent["hook"] == "patient-view"
    assert set(sent["prefetch"]) == set(keys)
    assert sent["context"]["patientId"] == sent["prefetch"]["patient"]["id"]
    indicators = [c.get_attribute("data-indicator") for c in cards(page)]
    assert indicators == ["warning", "warning", "info"]


def test_questionnaire_form_builds_the_response_and_updates_live(page: WebDriver, server: LiveServer) -> None:
    """Every item rendered; unanswered by default; answers become a nested QuestionnaireResponse."""
    mode(page, "form")
    questionnaire = requests.get(server.url + "/fhir/Questionnaire/twitching-assessment", timeout=10).json()
    leaves = [i for g in questionnaire["item"] for i in g["item"]]
    booleans = [i["linkId"] for i in leaves if i["type"] == "boolean"]
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#questionnaire fieldset.group"))
    rendered = set(page.execute_script(
        "return [...document.querySelectorAll('#questionnaire [data-link-id]')].map(e => e.dataset.linkId)"
    ))  # fmt: skip
    assert rendered == {i["linkId"] for i in leaves}
    for link_id in booleans:  # unknown is the default, never "no"
        assert question(page, link_id, '[value=""]').is_selected(), link_id
    # A date input's typed format follows the browser locale; the value is set as the picker would.
    page.execute_script(
        "const e = document.getElementById('patient-birth-date'); e.value = '1968-03-14';"
        " e.dispatchEvent(new Event('input', {bubbles: true}));"
    )
    Select(page.find_element(By.ID, "patient-sex")).select_by_value("male")
    question(page, "duration-days").send_keys("10")
    thigh = page.find_element(
        By.XPATH, "//fieldset[legend='Where is the twitching?']//label[contains(., 'thigh')]/input"
    )
    click(page, thigh)
    answer_boolean(page, "weakness", "true")
    # No button pressed: the cards follow the answers.
    wait(page, lambda d: any(c.get_attribute("data-indicator") == "critical" for c in cards(d)))
    wait(
        page,
        lambda d: '"weakness"' in (d.find_element(By.ID, "raw-request").get_attribute("textContent") or ""),
    )
    bundle = raw(page, "request")
    patient, response = (e["resource"] for e in bundle["entry"])
    assert patient == {
        "resourceType": "Patient",
        "id": "form-patient",
        "birthDate": "1968-03-14",
        "gender": "male",
    }
    assert response["questionnaire"] == f"{questionnaire['url']}|{questionnaire['version']}"
    assert response["subject"] == {"reference": "Patient/form-patient"}
    groups = {g["linkId"]: {i["linkId"]: i["answer"] for i in g["item"]} for g in response["item"]}
    assert set(groups) == {"pattern", "neuro"}, "only groups with an answered item"
    assert groups["pattern"]["duration-days"] == [{"valueInteger": 10}]
    assert groups["pattern"]["body-areas"][0]["valueCoding"]["code"] == "thigh"
    assert groups["neuro"] == {"weakness": [{"valueBoolean": True}]}
    screenshot(page, "form-desktop", height=1400)
    screenshot(page, "form-sidebar", width=NARROW, height=1100)

    answer_boolean(page, "weakness", "")  # back to unanswered: the item leaves the response
    wait(
        page,
        lambda d: (
            '"weakness"' not in (d.find_element(By.ID, "raw-request").get_attribute("textContent") or "")
        ),
    )
    assert "neuro" not in {g["linkId"] for g in raw(page, "request")["entry"][1]["resource"]["item"]}
    answer_boolean(page, "weakness", "false")
    wait(
        page,
        lambda d: (
            '"valueBoolean": false'
            in (d.find_element(By.ID, "raw-request").get_attribute("textContent") or "")
        ),
    )


def _first_suggestion(page: WebDriver) -> tuple[WebElement, WebElement]:
    choose_example(page, "motor-neuron-red-flags", "fires-weakness")
    send_with_keyboard(page)
    wait(page, lambda d: cards(d))
    card = cards(page)[0]
    return card, card.find_element(By.CSS_SELECTOR, "button.suggestion")


def test_accepting_a_suggestion_sends_feedback(page: WebDriver, recorder: FeedbackRecorder) -> None:
    """The spec's feedback body reaches the service and the page says what the service answered."""
    card, button = _first_suggestion(page)
    before = len(recorder.posts)
    button.send_keys(Keys.ENTER)
    status = card.find_element(By.CSS_SELECTOR, ".feedback-status")
    wait(page, lambda d: status.text and "Sending" not in status.text)
    assert len(recorder.posts) == before + 1
    entry = recorder.posts[-1]["feedback"][0]
    assert set(entry) == {"card", "outcome", "acceptedSuggestions", "outcomeTimestamp"}
    assert entry["card"] == card.get_attribute("data-uuid")
    assert entry["outcome"] == "accepted"
    assert entry["acceptedSuggestions"] == [{"id": button.get_attribute("data-uuid")}]
    assert entry["outcomeTimestamp"].endswith("Z")
    answered = recorder.statuses[-1]
    if 200 <= answered < 300:
        assert status.text.startswith(f"Feedback recorded (HTTP {answered})"), status.text
        assert not button.is_enabled()
        assert button.text.startswith("✓ Accepted")
    else:  # the endpoint is not there (yet): the page must say so plainly
        assert f"HTTP {answered}" in status.text, status.text
        assert "not recorded" in status.text, status.text
    screenshot(page, "feedback-sidebar", width=NARROW, height=1100, top="cards-title")


def test_feedback_endpoint_missing_is_shown(page: WebDriver, recorder: FeedbackRecorder) -> None:
    """A 404 from the feedback endpoint is shown as such, and the button can be tried again."""
    card, button = _first_suggestion(page)
    recorder.absent = True
    button.click()
    status = card.find_element(By.CSS_SELECTOR, ".feedback-status")
    wait(page, lambda d: status.text and "Sending" not in status.text)
    assert "HTTP 404" in status.text, status.text
    assert "no feedback endpoint" in status.text, status.text
    assert "error" in (status.get_attribute("class") or "")
    assert button.is_enabled()
    assert "HTTP 404" in page.find_element(By.ID, "raw-feedback-line").text
    screenshot(page, "feedback-404-sidebar", width=NARROW, height=1100, top="cards-title")


def test_patient_text_cannot_inject_markup(page: WebDriver) -> None:
    """A medication name full of HTML and a javascript: link is shown as text in the card."""
    mode(page, "form")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#questionnaire fieldset.group"))
    hostile = (
        "<img src=x onerror=\"document.body.dataset.pwned='1'\">"
        " [go](javascript:document.body.dataset.pwned='2')"
    )
    answer_boolean(page, "new-medication", "true")
    question(page, "new-medication-name").send_keys(hostile)
    wait(page, lambda d: any("<img src=x" in c.text for c in cards(d)), timeout=20)
    assert not page.find_elements(By.CSS_SELECTOR, "#cards img, #cards script, #cards iframe")
    hrefs = [a.get_attribute("href") or "" for a in page.find_elements(By.CSS_SELECTOR, "#cards a")]
    assert not [h for h in hrefs if not h.startswith(("http://", "https://"))], hrefs
    assert page.execute_script("return document.body.dataset.pwned") is None


def test_markdown_renderer_builds_only_safe_nodes(page: WebDriver) -> None:
    """The renderer itself: elements it knows, text nodes for everything else, no unsafe links."""
    html = page.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        import('/ui/markdown.js').then(({renderMarkdown}) => {
          const box = document.createElement('div');
          box.append(renderMarkdown(arguments[0]));
          done(box.innerHTML);
        });
        """,
        "# T\n**b** _i_ `c<script>` [ok](https://x.org) [bad](javascript:alert(1))\n- <b>one</b>\n1. two",
    )
    assert html == (
        "<h4>T</h4><p><strong>b</strong> <em>i</em> <code>c&lt;script&gt;</code>"
        ' <a href="https://x.org" target="_blank" rel="noopener noreferrer">ok</a>'
        " [bad](javascript:alert(1))</p><ul><li>&lt;b&gt;one&lt;/b&gt;</li></ul><ol><li>two</li></ol>"
    )


def test_paste_and_upload_show_the_services_problems(page: WebDriver, tmp_path: Path) -> None:
    """An uploaded file fills the text area; a Bundle without a Patient shows the 422 with its path."""
    mode(page, "paste")
    upload = tmp_path / "empty-bundle.json"
    upload.write_text('{"resourceType": "Bundle", "type": "collection", "entry": []}', encoding="utf-8")
    page.find_element(By.ID, "file-input").send_keys(str(upload))
    wait(page, lambda d: "collection" in (d.find_element(By.ID, "paste-input").get_attribute("value") or ""))
    send_with_keyboard(page)
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#cards .problems"))
    assert page.find_element(By.ID, "status").text.startswith("HTTP 422")
    problem = page.find_element(By.CSS_SELECTOR, "#cards .problems li").text
    assert problem.startswith("Bundle.entry: ")
    assert "exactly one Patient" in problem
    screenshot(page, "problems-sidebar", width=NARROW, height=1100, top="cards-title")


def test_every_control_has_a_label(page: WebDriver) -> None:
    """Each input, select, textarea and button has an accessible name, in every mode."""
    mode(page, "form")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#questionnaire fieldset.group"))
    unlabelled = page.execute_script(
        """
        return [...document.querySelectorAll('input, select, textarea, button')].filter(e => {
          const named = (e.labels && e.labels.length) || e.getAttribute('aria-label')
            || e.getAttribute('aria-labelledby') || (e.tagName === 'BUTTON' && e.textContent.trim());
          return !named;
        }).map(e => e.outerHTML);
        """
    )
    assert unlabelled == []


def test_the_api_page_renders_without_external_assets(browser: webdriver.Chrome, server: LiveServer) -> None:
    """/docs shows every operation, styled by the local stylesheet, with no policy violation."""
    browser.get(server.url + "/docs")
    spec = yaml.safe_load(requests.get(server.url + "/openapi.yaml", timeout=10).text)
    operations = sum(1 for item in spec["paths"].values() for method in item if method in ("get", "post"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "article.operation")) == operations
    # The stylesheet applied: the top bar has its dark background (not the browser's default).
    colour = browser.find_element(By.CSS_SELECTOR, "header.top").value_of_css_property("background-color")
    assert colour == "rgba(18, 38, 63, 1)"
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(server.url) for url in resources), resources
    logs = browser.get_log("browser")  # type: ignore[no-untyped-call]  # selenium leaves it unannotated
    assert not [e for e in logs if e["level"] == "SEVERE"], logs
    screenshot(browser, "api-docs")
