// A small Markdown renderer for card details that builds DOM nodes only.
// Every piece of text becomes a text node (textContent), never HTML, so data in a card cannot
// inject markup or script. It covers what cards use: paragraphs, headings, bullet and numbered
// lists, **bold**, *italic* / _italic_, `code` and [links](https://...).

const SAFE_URL = /^(https?:|mailto:|\/(?!\/)|#)/i;

// Inline patterns, tried together; the earliest match wins, ties go to the first listed.
const INLINE = [
  { kind: "code", re: /`([^`]+)`/ },
  { kind: "link", re: /\[([^\]]+)\]\(([^()\s]+)\)/ },
  { kind: "strong", re: /\*\*(?=\S)([\s\S]*?\S)\*\*/ },
  { kind: "strong", re: /__(?=\S)([\s\S]*?\S)__/ },
  { kind: "em", re: /\*(?=[^\s*])([^*]*?[^\s*])\*/ },
  { kind: "em", re: /(?<![\w])_(?=[^\s_])([^_]*?[^\s_])_(?![\w])/ },
];

/** The URL when it is safe to follow (http, https, mailto, same-site), else null. */
export function safeUrl(url) {
  const trimmed = String(url).trim();
  return SAFE_URL.test(trimmed) ? trimmed : null;
}

function inline(text, parent) {
  let rest = text;
  while (rest) {
    let best = null;
    for (const pattern of INLINE) {
      const m = pattern.re.exec(rest);
      if (m && (best === null || m.index < best.m.index)) best = { m, kind: pattern.kind };
    }
    if (best === null) {
      parent.append(document.createTextNode(rest));
      return;
    }
    const { m, kind } = best;
    if (m.index > 0) parent.append(document.createTextNode(rest.slice(0, m.index)));
    if (kind === "code") {
      const code = document.createElement("code");
      code.textContent = m[1];
      parent.append(code);
    } else if (kind === "link") {
      const href = safeUrl(m[2]);
      if (href === null) {
        // An unsafe scheme (javascript:, data:, ...) is shown as text, never made clickable.
        parent.append(document.createTextNode(m[0]));
      } else {
        const a = document.createElement("a");
        a.href = href;
        if (/^https?:/i.test(href)) {
          a.target = "_blank";
          a.rel = "noopener noreferrer";
        }
        inline(m[1], a);
        parent.append(a);
      }
    } else {
      const el = document.createElement(kind);
      inline(m[1], el);
      parent.append(el);
    }
    rest = rest.slice(m.index + m[0].length);
  }
}

const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d{1,9}[.)]\s+(.*)$/;
const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/;

/** Render Markdown text as a DocumentFragment built from elements and text nodes only. */
export function renderMarkdown(source, headingBase = 4) {
  const fragment = document.createDocumentFragment();
  const lines = String(source ?? "").replace(/\r\n?/g, "\n").split("\n");
  let paragraph = [];
  let list = null;

  const flushParagraph = () => {
    if (paragraph.length) {
      const p = document.createElement("p");
      // Soft line breaks inside a paragraph are spaces, as in GitHub Flavored Markdown.
      inline(paragraph.join(" "), p);
      fragment.append(p);
      paragraph = [];
    }
  };
  const flushList = () => {
    if (list) {
      fragment.append(list.el);
      list = null;
    }
  };

  for (const line of lines) {
    const bullet = BULLET.exec(line);
    const numbered = bullet ? null : NUMBERED.exec(line);
    const heading = HEADING.exec(line);
    if (bullet || numbered) {
      flushParagraph();
      const tag = bullet ? "ul" : "ol";
      if (!list || list.tag !== tag) {
        flushList();
        list = { tag, el: document.createElement(tag) };
      }
      const li = document.createElement("li");
      inline((bullet || numbered)[1], li);
      list.el.append(li);
    } else if (heading) {
      flushParagraph();
      flushList();
      const level = Math.min(6, headingBase + heading[1].length - 1);
      const h = document.createElement(`h${level}`);
      inline(heading[2], h);
      fragment.append(h);
    } else if (!line.trim()) {
      flushParagraph();
      flushList();
    } else if (list && /^\s{2,}\S/.test(line)) {
      // An indented continuation line belongs to the last list item.
      list.el.lastElementChild.append(document.createTextNode(" "));
      inline(line.trim(), list.el.lastElementChild);
    } else {
      flushList();
      paragraph.push(line.trim());
    }
  }
  flushParagraph();
  flushList();
  return fragment;
}
