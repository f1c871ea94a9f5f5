// The card viewer: pick an example, paste or upload a Bundle or hook request, or answer the
// questionnaire; send it to /evaluate or a CDS service; show the cards, the raw exchange, and
// send feedback when a suggestion is accepted or a card dismissed.
import { renderCards, renderProblems, summarise } from "./cards.js";
import { renderQuestionnaire } from "./questionnaire.js";

// Used only when discovery fails: the default ids, one service per hook (patient-view's id is the base).
const FALLBACK_SERVICE = { id: "twitching-red-flags", hook: "patient-view", prefetch: {} };
const fallbackFor = (hook) =>
  hook === FALLBACK_SERVICE.hook ? FALLBACK_SERVICE : { ...FALLBACK_SERVICE, id: `${FALLBACK_SERVICE.id}-${hook}`, hook };
const ORDER_HOOKS = new Set(["order-select", "order-sign"]);
const $ = (id) => document.getElementById(id);

const state = {
  services: [],
  examples: [],
  exampleCache: new Map(),
  form: null,
  seq: 0,
  cardsServiceId: FALLBACK_SERVICE.id,
  formPatientUrl: `urn:uuid:${uuid4()}`,
  formResponseUrl: `urn:uuid:${uuid4()}`,
  liveTimer: 0,
};

/** A random (version 4) UUID; crypto.randomUUID exists only in secure contexts. */
function uuid4() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function localToday() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

function setStatus(text, kind = "") {
  const status = $("status");
  status.className = `status ${kind}`.trim();
  status.textContent = text;
  const mini = $("mini-status");
  mini.className = `mini-status ${kind}`.trim();
  mini.textContent = text;
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json, application/fhir+json" } });
  if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
  return response.json();
}

// --- loading what the page offers -----------------------------------------------------------

async function loadServices() {
  try {
    const body = await getJson("/cds-services");
    state.services = Array.isArray(body.services) ? body.services : [];
  } catch (error) {
    state.services = [];
    setStatus(`Discovery failed (${error.message}); hooks cannot be chosen.`, "error");
  }
  const select = $("target-select");
  state.services.forEach((service, index) => {
    const option = document.createElement("option");
    option.value = `hook:${index}`;
    option.textContent = `${service.hook}: POST /cds-services/${service.id} (Bundle sent as prefetch)`;
    select.append(option);
  });
  if (state.services.length) state.cardsServiceId = state.services[0].id;
}

async function loadExamples() {
  const select = $("example-select");
  try {
    const body = await getJson("/examples");
    state.examples = body.examples || [];
  } catch (error) {
    select.replaceChildren(new Option(`Examples unavailable (${error.message})`, ""));
    return;
  }
  select.replaceChildren();
  if (!state.examples.length) {
    select.append(new Option("No examples on this server", ""));
    return;
  }
  const groups = new Map();
  state.examples.forEach((example, index) => {
    if (!groups.has(example.rule)) {
      const group = document.createElement("optgroup");
      group.label = example.rule;
      groups.set(example.rule, group);
      select.append(group);
    }
    groups.get(example.rule).append(new Option(`${example.name} (${example.kind})`, String(index)));
  });
  const preferred = state.examples.findIndex(
    (e) => e.rule === "motor-neuron-red-flags" && e.name === "fires-weakness",
  );
  select.value = String(preferred >= 0 ? preferred : 0);
  describeExample();
}

function describeExample() {
  const example = state.examples[Number($("example-select").value)];
  $("example-description").textContent = example ? example.description : "";
  if (!example) {
    $("example-expected").textContent = "";
    return;
  }
  const expected = example.expectedCards.map((c) => `${c.indicator} ${c.rule}`).join(", ");
  $("example-expected").textContent = `Expected cards: ${expected || "none"}.`;
}

async function loadQuestionnaire() {
  const container = $("questionnaire");
  try {
    const questionnaire = await getJson("/fhir/Questionnaire/twitching-assessment");
    state.form = renderQuestionnaire(container, questionnaire);
  } catch (error) {
    container.replaceChildren();
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = `The questionnaire could not be loaded: ${error.message}`;
    container.append(p);
  }
  container.removeAttribute("aria-busy");
}

// --- what to send ---------------------------------------------------------------------------

function formBundle() {
  const patient = { resourceType: "Patient", id: "form-patient" };
  if ($("patient-birth-date").value) patient.birthDate = $("patient-birth-date").value;
  if ($("patient-sex").value) patient.gender = $("patient-sex").value;
  const entry = [{ fullUrl: state.formPatientUrl, resource: patient }];
  if (state.form) {
    const response = state.form.response("Patient/form-patient", localToday());
    entry.push({ fullUrl: state.formResponseUrl, resource: response });
  }
  return { resourceType: "Bundle", type: "collection", entry };
}

async function currentText() {
  if (mode() === "form") return JSON.stringify(formBundle());
  if (mode() === "paste") return $("paste-input").value;
  const example = state.examples[Number($("example-select").value)];
  if (!example) throw new Error("no example is selected");
  if (!state.exampleCache.has(example.url)) {
    const response = await fetch(example.url);
    if (!response.ok) throw new Error(`GET ${example.url}: HTTP ${response.status}`);
    state.exampleCache.set(example.url, await response.text());
  }
  return state.exampleCache.get(example.url);
}

/** A Bundle as the hook request an EHR would send: every discovery prefetch key filled from it. */
export function toHookRequest(bundle, service) {
  const resources = (Array.isArray(bundle.entry) ? bundle.entry : [])
    .map((e) => e && e.resource)
    .filter((r) => r && typeof r === "object");
  const patient = resources.find((r) => r.resourceType === "Patient");
  const prefetch = {};
  for (const [key, template] of Object.entries(service.prefetch || {})) {
    const type = String(template).split(/[?/]/)[0];
    const found = resources.filter((r) => r.resourceType === type);
    if (String(template).includes("?")) {
      const searchset = { resourceType: "Bundle", type: "searchset", total: found.length };
      if (found.length) searchset.entry = found.map((resource) => ({ resource, search: { mode: "match" } }));
      prefetch[key] = searchset;
    } else {
      prefetch[key] = found[0] ?? null;
    }
  }
  const context = { userId: "Practitioner/example", patientId: patient?.id ?? "unknown" };
  if (ORDER_HOOKS.has(service.hook)) {
    const drafts = resources.filter((r) => r.status === "draft" && /Request$/.test(r.resourceType));
    context.draftOrders = { resourceType: "Bundle", type: "collection", entry: drafts.map((resource) => ({ resource })) };
    if (service.hook === "order-select") context.selections = drafts.map((r) => `${r.resourceType}/${r.id}`);
  }
  return { hook: service.hook, hookInstance: uuid4(), context, prefetch };
}

function route(text) {
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const target = $("target-select").value;
  const chosen = target.startsWith("hook:") ? state.services[Number(target.slice(5))] : null;
  const isObject = json !== null && typeof json === "object" && !Array.isArray(json);
  if (isObject && typeof json.hook === "string") {
    // Each hook has its own service: a hook request goes to the one for its hook, whatever is chosen.
    const service =
      state.services.find((s) => s.hook === json.hook) ||
      chosen ||
      (state.services.length ? state.services[0] : fallbackFor(json.hook));
    return { url: `/cds-services/${service.id}`, body: text, type: "application/json", serviceId: service.id };
  }
  if (chosen && isObject && json.resourceType === "Bundle") {
    const body = JSON.stringify(toHookRequest(json, chosen));
    return { url: `/cds-services/${chosen.id}`, body, type: "application/json", serviceId: chosen.id };
  }
  if (chosen) {
    return { url: `/cds-services/${chosen.id}`, body: text, type: "application/json", serviceId: chosen.id };
  }
  const serviceId = (state.services[0] || FALLBACK_SERVICE).id;
  return { url: "/evaluate", body: text, type: "application/fhir+json", serviceId };
}

// --- sending --------------------------------------------------------------------------------

async function send() {
  const mine = ++state.seq;
  let text;
  try {
    text = await currentText();
  } catch (error) {
    setStatus(`Nothing sent: ${error.message}.`, "error");
    return;
  }
  if (!text.trim()) {
    setStatus("Nothing sent: the request is empty. Paste or upload a Bundle or hook request.", "error");
    return;
  }
  const request = route(text);
  $("raw-request-line").textContent = `POST ${request.url} (${request.type})`;
  $("raw-request").textContent = pretty(request.body);
  $("raw-response-line").textContent = "";
  $("raw-response").textContent = "";
  const cards = $("cards");
  cards.setAttribute("aria-busy", "true");
  setStatus("Asking the service…");
  const started = performance.now();
  let response;
  let body;
  try {
    response = await fetch(request.url, {
      method: "POST",
      headers: { "Content-Type": request.type, Accept: "application/json, application/fhir+json" },
      body: request.body,
    });
    const answer = await response.text();
    try {
      body = JSON.parse(answer);
    } catch {
      body = answer;
    }
    if (mine !== state.seq) return; // a newer request has been sent: its answer wins
    const ms = Math.round(performance.now() - started);
    const type = response.headers.get("Content-Type") || "no type";
    $("raw-response-line").textContent = `HTTP ${response.status} ${response.statusText} (${type}, ${ms} ms)`;
    $("raw-response").textContent = typeof body === "string" ? body : JSON.stringify(body, null, 2);
  } catch (error) {
    if (mine !== state.seq) return;
    cards.removeAttribute("aria-busy");
    cards.replaceChildren();
    setStatus(`Could not reach the service: ${error.message}.`, "error");
    return;
  }
  cards.removeAttribute("aria-busy");
  if (response.ok && body && Array.isArray(body.cards)) {
    state.cardsServiceId = request.serviceId;
    renderCards(cards, body.cards, { onAccept: accept, onOverride: override });
    setStatus(summarise(body.cards), "ok");
  } else if (response.status === 401) {
    // A service with JWT issuers configured answers a bare 401; its header says why.
    const why = response.headers.get("WWW-Authenticate") || "no WWW-Authenticate header";
    renderProblems(cards, 401, `This service needs a CDS client JWT for ${request.url} (${why}).`);
    setStatus("HTTP 401: the service needs a CDS client JWT.", "error");
  } else {
    renderProblems(cards, response.status, body);
    const issues = body && Array.isArray(body.issue) ? body.issue.length : 0;
    setStatus(`HTTP ${response.status}: ${issues} problem${issues === 1 ? "" : "s"} reported, listed below.`, "error");
  }
}

async function sendFeedback(entry, what) {
  const url = `/cds-services/${state.cardsServiceId}/feedback`;
  const body = JSON.stringify({ feedback: [entry] }, null, 2);
  $("raw-feedback-details").open = true;
  $("raw-feedback-line").textContent = `POST ${url}`;
  $("raw-feedback").textContent = body;
  let response;
  let answer;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json, application/fhir+json" },
      body,
    });
    answer = await response.text();
  } catch (error) {
    return { ok: false, message: `Feedback not sent: the service could not be reached (${error.message}).` };
  }
  $("raw-feedback-line").textContent = `POST ${url}: HTTP ${response.status}`;
  $("raw-feedback").textContent = `${body}\n\n--- HTTP ${response.status} ${response.statusText}\n${pretty(answer)}`;
  if (response.ok) {
    return { ok: true, message: `Feedback recorded (HTTP ${response.status}): ${what}.` };
  }
  let diagnostics = "";
  try {
    diagnostics = (JSON.parse(answer).issue || []).map((i) => i.diagnostics).filter(Boolean).join("; ");
  } catch {
    diagnostics = "";
  }
  if (response.status === 404) {
    return {
      ok: false,
      message: `Feedback not recorded: HTTP 404 from POST ${url}. This service has no feedback endpoint (yet)${diagnostics ? `: ${diagnostics}` : ""}.`,
    };
  }
  return { ok: false, message: `Feedback not recorded: HTTP ${response.status}${diagnostics ? `: ${diagnostics}` : ""}.` };
}

function accept(card, suggestion) {
  const entry = {
    card: card.uuid,
    outcome: "accepted",
    acceptedSuggestions: [{ id: suggestion.uuid }],
    outcomeTimestamp: new Date().toISOString(),
  };
  return sendFeedback(entry, `accepted “${suggestion.label}”`);
}

function override(card, reason) {
  const entry = {
    card: card.uuid,
    outcome: "overridden",
    overrideReason: { reason },
    outcomeTimestamp: new Date().toISOString(),
  };
  return sendFeedback(entry, `dismissed: ${reason.display || reason.code}`);
}

// --- wiring ---------------------------------------------------------------------------------

function showMode() {
  const current = mode();
  for (const name of ["example", "paste", "form"]) $(`mode-${name}`).hidden = name !== current;
  $("send-button").textContent = current === "form" ? "Update cards" : "Show cards";
  if (current === "form") send();
}

function scheduleLive() {
  // Answers change the cards live; the pause keeps a typist from sending a request per key.
  clearTimeout(state.liveTimer);
  state.liveTimer = setTimeout(send, 350);
}

function wire() {
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", showMode);
  $("example-select").addEventListener("change", describeExample);
  $("file-input").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    $("paste-input").value = await file.text();
    setStatus(`Loaded ${file.name} (${file.size} bytes). Press Show cards to send it.`);
  });
  $("mode-form").addEventListener("input", scheduleLive);
  $("mode-form").addEventListener("change", scheduleLive);
  $("request-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(state.liveTimer);
    send().then(() => {
      const panel = $("cards-title").getBoundingClientRect();
      if (panel.top < 0 || panel.top > window.innerHeight) $("cards-title").scrollIntoView();
    });
  });
}

async function main() {
  wire();
  await Promise.all([loadServices(), loadExamples(), loadQuestionnaire()]);
  document.body.dataset.ready = "true"; // for people and end-to-end tests: everything is loaded
}

main();
