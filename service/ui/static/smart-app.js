// The SMART app: completes authorization (fhirclient), reads the launch patient's record, shows the
// published twitching-assessment Questionnaire pre-filled, saves a new QuestionnaireResponse for
// that patient, then asks this service (POST /smart/cards) for the patient-view cards on the fresh
// record. fhirclient keeps the access token in sessionStorage; the only time it leaves the browser
// for this service is that request, whose body carries it (the service reads the record with it
// and neither logs nor keeps it), so the cards come whether or not the hook wants a CDS client JWT.
import { renderCards, summarise } from "./cards.js";
import { answersByLinkId, renderQuestionnaire } from "./questionnaire.js";

// What the app does with the record, as SMART v2 permissions: read, search, create.
export const NEEDED = [
  ["Patient", "r"],
  ["Observation", "rs"],
  ["Condition", "rs"],
  ["QuestionnaireResponse", "rs"],
  ["QuestionnaireResponse", "c"],
];
// The prefetch keys the form's pre-fill reads within those scopes.
const READABLE = new Set(["Observation", "Condition", "QuestionnaireResponse"]);

const section = document.getElementById("smart-app");
const status = document.getElementById("status");
const cardsStatus = document.getElementById("cards-status");
const form = document.getElementById("assessment-form");
const saveButton = document.getElementById("save-button");

function setStatus(node, text, kind = "") {
  node.textContent = text;
  node.className = kind ? `status ${kind}` : "status";
}

function allows(scope, type, op) {
  const match = /^(patient|user)\/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?$/.exec(scope);
  if (!match || (match[2] !== type && match[2] !== "*")) return false;
  const permission = match[3];
  if (permission === "*") return true;
  if (permission === "read") return op === "r" || op === "s";
  if (permission === "write") return op === "c" || op === "u" || op === "d";
  return /^c?r?u?d?s?$/.test(permission) && permission.includes(op);
}

/** The scopes of NEEDED the token does not grant (v1 .read/.write/.* and v2 cruds both count). */
export function missingScopes(granted) {
  const scopes = String(granted || "").split(/\s+/).filter(Boolean);
  return NEEDED.filter(([type, ops]) => ![...ops].every((op) => scopes.some((s) => allows(s, type, op)))).map(
    ([type, ops]) => `patient/${type}.${ops}`,
  );
}

function fill(template, patientId) {
  // patient=Patient/<id> is never ambiguous (and the only form some servers match).
  return template
    .replaceAll("patient={{context.patientId}}", `patient=Patient/${encodeURIComponent(patientId)}`)
    .replaceAll("{{context.patientId}}", encodeURIComponent(patientId));
}

async function getJson(url, options) {
  const response = await fetch(url, options);
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (!response.ok) {
    const issues = body && Array.isArray(body.issue) ? body.issue.map((i) => i.diagnostics).join("; ") : text.slice(0, 200);
    throw new Error(`${url} answered ${response.status}: ${issues}`);
  }
  return body;
}

async function readRecord(client, templates, patientId) {
  const patient = await client.request(`Patient/${encodeURIComponent(patientId)}`);
  const prefetch = { patient };
  for (const [key, template] of Object.entries(templates)) {
    const type = template.split("?")[0];
    if (!READABLE.has(type)) continue;
    const resources = await client.request(fill(template, patientId), { pageLimit: 0, flat: true });
    prefetch[key] = {
      resourceType: "Bundle",
      type: "searchset",
      entry: (resources || []).filter(Boolean).map((resource) => ({ resource })),
    };
  }
  return prefetch;
}

function canonicalOf(reference) {
  return String(reference || "").split("|")[0];
}

function latestResponse(prefetch, questionnaireUrl) {
  const bundles = Object.values(prefetch).filter((b) => b && b.resourceType === "Bundle");
  const responses = bundles
    .flatMap((b) => b.entry.map((e) => e.resource))
    .filter((r) => r.resourceType === "QuestionnaireResponse" && canonicalOf(r.questionnaire) === questionnaireUrl);
  responses.sort((a, b) => String(b.authored || "").localeCompare(String(a.authored || "")));
  return responses[0] || null;
}

function chartFindings(prefetch, questionnaire) {
  // A question the Questionnaire codes (e.g. weakness, dysphagia) is pre-filled "yes" when an active
  // Condition in the chart carries that code: the clinician sees it marked and can change it.
  const conditions = Object.values(prefetch)
    .filter((b) => b && b.resourceType === "Bundle")
    .flatMap((b) => b.entry.map((e) => e.resource))
    .filter((r) => r.resourceType === "Condition");
  const found = new Map();
  const walk = (items) => {
    for (const item of items || []) {
      walk(item.item);
      if (item.type !== "boolean" || !Array.isArray(item.code)) continue;
      const hit = conditions.find((condition) => {
        const statuses = (condition.clinicalStatus?.coding || []).map((c) => c.code);
        if (statuses.length && !statuses.includes("active")) return false;
        const codings = condition.code?.coding || [];
        return codings.some((c) => item.code.some((q) => q.system === c.system && q.code === c.code));
      });
      if (hit) found.set(item.linkId, hit);
    }
  };
  walk(questionnaire.item);
  return found;
}

function mark(view, linkIds, className, note) {
  for (const linkId of linkIds) {
    const field = view.fields.get(linkId);
    if (!field) continue;
    field.node.classList.add(className);
    const hint = document.createElement("p");
    hint.className = `hint ${className}-note`;
    hint.textContent = note;
    field.node.append(hint);
  }
}

async function showCards(client, patientId) {
  setStatus(cardsStatus, "Asking the service for the cards on the updated record…");
  // The service reads the record from the EHR with this token: only what it may read, for this patient.
  const answer = await getJson("../smart/cards", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      fhirServer: client.state.serverUrl,
      patient: patientId,
      access_token: client.state.tokenResponse.access_token,
    }),
  });
  const cards = answer.cards || [];
  const declined = async () => ({ ok: false, message: "Order from the EHR: this app writes only the twitching assessment." });
  renderCards(document.getElementById("cards"), cards, { onAccept: declined, onOverride: declined });
  setStatus(cardsStatus, summarise(cards), "ok");
}

async function main() {
  let client;
  try {
    client = await window.FHIR.oauth2.ready();
  } catch (error) {
    setStatus(status, `The EHR did not authorize the app: ${error.message}`, "error");
    return;
  }
  const patientId = client.patient.id;
  if (!patientId) {
    setStatus(status, "The EHR launched the app without a patient: open it from a patient's chart.", "error");
    return;
  }
  const missing = missingScopes(client.state.tokenResponse?.scope);
  if (missing.length) {
    setStatus(
      status,
      `The EHR did not grant what the app needs: ${missing.join(", ")}. Nothing was read or written;` +
        " ask the EHR's administrator to grant these scopes to the app.",
      "error",
    );
    return;
  }
  const questionnaireUrl = section.dataset.questionnaireUrl;
  // The patient-view prefetch templates, on the page: discovery may want a CDS client JWT.
  const templates = JSON.parse(section.dataset.prefetch || "{}");
  let questionnaire, prefetch;
  try {
    questionnaire = await getJson(`../fhir/Questionnaire/${encodeURIComponent(questionnaireUrl.split("/").pop())}`);
    prefetch = await readRecord(client, templates, patientId);
  } catch (error) {
    setStatus(status, `The record could not be read: ${error.message}`, "error");
    return;
  }
  const patient = prefetch.patient;
  const name = (patient.name || [])[0];
  const shown = name ? [...(name.given || []), name.family].filter(Boolean).join(" ") : `Patient/${patientId}`;
  document.getElementById("patient").textContent = `Patient: ${shown}${patient.birthDate ? `, born ${patient.birthDate}` : ""}`;

  const view = renderQuestionnaire(document.getElementById("questionnaire"), questionnaire);
  const latest = latestResponse(prefetch, questionnaireUrl);
  if (latest) view.fill(answersByLinkId(latest));
  const fromChart = chartFindings(prefetch, questionnaire);
  const answered = (linkId) => view.fields.get(linkId)?.answer() || [];
  const chartOnly = [...fromChart.keys()].filter((linkId) => !answered(linkId).length);
  view.fill(new Map(chartOnly.map((linkId) => [linkId, [{ valueBoolean: true }]])));
  mark(view, chartOnly, "from-chart", "Pre-filled from a diagnosis in the chart: check it with the patient.");
  // An earlier "no" is kept, but never silently against an active diagnosis saying otherwise.
  const conflicts = [...fromChart.keys()].filter((linkId) => answered(linkId).some((a) => a.valueBoolean === false));
  mark(view, conflicts, "chart-conflict", "The chart records an active diagnosis for this, but the last answer was no: check it.");
  const unanswered = view.unanswered();
  mark(view, unanswered, "unanswered", "Not answered yet.");
  form.hidden = false;
  setStatus(
    status,
    `${latest ? `Pre-filled from the response of ${latest.authored || "an unknown date"}` : "No earlier response"}; ` +
      `${unanswered.length} question${unanswered.length === 1 ? "" : "s"} unanswered.`,
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    saveButton.disabled = true;
    try {
      const response = view.response(`Patient/${patientId}`, new Date().toISOString());
      delete response.id; // the EHR assigns it
      response.questionnaire = canonicalOf(response.questionnaire) === questionnaireUrl ? response.questionnaire : questionnaireUrl;
      if (response.subject.reference !== `Patient/${client.patient.id}`) {
        throw new Error("the response is not for the launch patient; nothing was saved");
      }
      const saved = await client.create(response);
      setStatus(status, `Saved to the record as QuestionnaireResponse/${saved.id}.`, "ok");
      section.dataset.saved = `QuestionnaireResponse/${saved.id}`;
    } catch (error) {
      setStatus(status, `Not saved: ${error.message}`, "error");
      saveButton.disabled = false;
      return;
    }
    try {
      await showCards(client, patientId);
    } catch (error) {
      setStatus(cardsStatus, `Saved, but the cards could not be fetched: ${error.message}`, "error");
    } finally {
      saveButton.disabled = false;
    }
  });
}

main();
