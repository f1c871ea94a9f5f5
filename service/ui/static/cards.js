// Cards rendered as an EHR sidebar shows them: indicator, summary, detail, suggestions, links,
// source. Only DOM APIs and textContent are used: card data never becomes HTML.
import { renderMarkdown, safeUrl } from "./markdown.js";

const INDICATOR_LABELS = { critical: "Critical", warning: "Warning", info: "Info" };
const INDICATOR_ORDER = { critical: 0, warning: 1, info: 2 };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function link(url, label) {
  const href = safeUrl(url);
  if (href === null) return el("span", null, label);
  const a = el("a", null, label);
  a.href = href;
  if (/^https?:/i.test(href)) {
    a.target = "_blank";
    a.rel = "noopener noreferrer";
  }
  return a;
}

/** A short count such as "3 cards: 1 critical, 2 warning". */
export function summarise(cards) {
  if (!cards.length) return "No cards: the service has no guidance for this patient.";
  const counts = {};
  for (const card of cards) counts[card.indicator] = (counts[card.indicator] || 0) + 1;
  const parts = Object.keys(counts)
    .sort((a, b) => (INDICATOR_ORDER[a] ?? 9) - (INDICATOR_ORDER[b] ?? 9))
    .map((kind) => `${counts[kind]} ${kind}`);
  return `${cards.length} card${cards.length === 1 ? "" : "s"}: ${parts.join(", ")}.`;
}

/**
 * Render the cards into container. onAccept(card, suggestion) sends feedback and resolves to
 * {ok, message}; onOverride(card, reason) likewise for a dismissal with a reason.
 */
export function renderCards(container, cards, { onAccept, onOverride }) {
  container.replaceChildren();
  cards.forEach((card, index) => {
    const indicator = INDICATOR_LABELS[card.indicator] ? card.indicator : "unknown";
    const article = el("article", `card card-${indicator}`);
    const titleId = `card-${index}-summary`;
    article.setAttribute("aria-labelledby", titleId);
    article.dataset.uuid = card.uuid ?? "";
    article.dataset.indicator = card.indicator ?? "";

    const header = el("header", "card-header");
    header.append(el("span", `indicator indicator-${indicator}`, INDICATOR_LABELS[indicator] || String(card.indicator)));
    const summary = el("h3", "card-summary", card.summary ?? "");
    summary.id = titleId;
    header.append(summary);
    article.append(header);

    if (card.detail) {
      const detail = el("div", "card-detail");
      detail.append(renderMarkdown(card.detail));
      article.append(detail);
    }

    const feedbackStatus = el("p", "feedback-status");
    feedbackStatus.setAttribute("role", "status");

    if (Array.isArray(card.suggestions) && card.suggestions.length) {
      const group = el("div", "suggestions");
      group.setAttribute("role", "group");
      group.setAttribute("aria-label", `Suggestions for: ${card.summary ?? ""}`);
      for (const suggestion of card.suggestions) {
        const button = el("button", "suggestion", suggestion.label ?? "Accept");
        button.type = "button";
        button.dataset.uuid = suggestion.uuid ?? "";
        const actions = (suggestion.actions || []).map((a) => a.description).filter(Boolean);
        if (actions.length) button.title = actions.join("; ");
        button.addEventListener("click", async () => {
          button.disabled = true;
          button.setAttribute("aria-busy", "true");
          feedbackStatus.className = "feedback-status";
          feedbackStatus.textContent = "Sending feedback…";
          const result = await onAccept(card, suggestion);
          button.removeAttribute("aria-busy");
          feedbackStatus.classList.add(result.ok ? "ok" : "error");
          feedbackStatus.textContent = result.message;
          if (result.ok) {
            button.classList.add("accepted");
            button.textContent = `✓ Accepted: ${suggestion.label ?? ""}`;
          } else {
            button.disabled = false; // let the user try again
          }
        });
        group.append(button);
      }
      article.append(group);
    }

    if (Array.isArray(card.overrideReasons) && card.overrideReasons.length) {
      const details = el("details", "override");
      details.append(el("summary", null, "Dismiss with a reason"));
      const selectId = `card-${index}-override`;
      const label = el("label", null, "Reason");
      label.htmlFor = selectId;
      const select = el("select");
      select.id = selectId;
      card.overrideReasons.forEach((reason, i) => {
        const option = el("option", null, reason.display || reason.code);
        option.value = String(i);
        select.append(option);
      });
      const dismiss = el("button", "secondary", "Dismiss card");
      dismiss.type = "button";
      dismiss.addEventListener("click", async () => {
        dismiss.disabled = true;
        feedbackStatus.className = "feedback-status";
        feedbackStatus.textContent = "Sending feedback…";
        const result = await onOverride(card, card.overrideReasons[Number(select.value)]);
        feedbackStatus.classList.add(result.ok ? "ok" : "error");
        feedbackStatus.textContent = result.message;
        if (result.ok) article.classList.add("dismissed");
        else dismiss.disabled = false;
      });
      details.append(label, select, dismiss);
      article.append(details);
    }

    article.append(feedbackStatus);

    if (Array.isArray(card.links) && card.links.length) {
      const list = el("ul", "card-links");
      list.setAttribute("aria-label", "Links");
      for (const item of card.links) {
        const li = el("li");
        li.append(link(item.url, item.label || item.url));
        if (item.type === "smart") li.append(el("span", "hint", " (SMART app)"));
        list.append(li);
      }
      article.append(list);
    }

    if (card.source) {
      const source = el("p", "card-source");
      source.append(document.createTextNode("Source: "));
      source.append(card.source.url ? link(card.source.url, card.source.label ?? card.source.url) : el("span", null, card.source.label ?? ""));
      if (card.source.topic?.code) source.append(el("span", "topic", ` · topic ${card.source.topic.code}`));
      article.append(source);
    }
    container.append(article);
  });
}

/** Render an OperationOutcome (or any error body) as a list of problems with their paths. */
export function renderProblems(container, status, body) {
  container.replaceChildren();
  const box = el("div", "problems");
  box.append(el("h3", null, `The service answered HTTP ${status}`));
  const issues = body && Array.isArray(body.issue) ? body.issue : [];
  if (!issues.length) {
    box.append(el("p", null, typeof body === "string" ? body : "No OperationOutcome in the answer."));
  } else {
    const list = el("ul");
    for (const issue of issues) {
      const li = el("li");
      const where = Array.isArray(issue.expression) ? issue.expression.join(", ") : "";
      if (where) li.append(el("code", null, where), document.createTextNode(": "));
      li.append(document.createTextNode(issue.diagnostics || issue.code || "problem"));
      list.append(li);
    }
    box.append(list);
  }
  container.append(box);
}
