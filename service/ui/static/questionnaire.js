// A FHIR R4 Questionnaire rendered generically from its items, and the QuestionnaireResponse
// built from what was answered. An unanswered question is left out of the response: the rules
// read it as unknown, which is not the same as "no".

let counter = 0;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fieldId(item) {
  counter += 1;
  return `q-${String(item.linkId).replace(/[^A-Za-z0-9_-]/g, "_")}-${counter}`;
}

function optionLabel(option) {
  const coding = option.valueCoding;
  if (coding) return coding.display || coding.code;
  for (const key of ["valueString", "valueInteger", "valueDate", "valueTime"]) {
    if (key in option) return String(option[key]);
  }
  return "?";
}

function sameAnswer(option, answer) {
  const picked = optionAnswer(option);
  if (!picked) return false;
  const [key, value] = Object.entries(picked)[0];
  if (!(key in answer)) return false;
  if (key === "valueCoding") return value.code === answer.valueCoding.code && (!answer.valueCoding.system || value.system === answer.valueCoding.system);
  return value === answer[key];
}

function optionAnswer(option) {
  for (const key of ["valueCoding", "valueString", "valueInteger", "valueDate", "valueTime"]) {
    if (key in option) return { [key]: option[key] };
  }
  return null;
}

function booleanField(item) {
  const fieldset = el("fieldset", "question boolean");
  fieldset.append(el("legend", null, item.text || item.linkId));
  const name = fieldId(item);
  const choices = [
    ["true", "Yes"],
    ["false", "No"],
    ["", "Unanswered"],
  ];
  const inputs = [];
  const row = el("div", "choices");
  for (const [value, text] of choices) {
    const label = el("label", "choice");
    const input = el("input");
    input.type = "radio";
    input.name = name;
    input.value = value;
    input.checked = value === ""; // unanswered is the default: unknown, never "no"
    input.dataset.linkId = item.linkId;
    inputs.push(input);
    label.append(input, document.createTextNode(` ${text}`));
    row.append(label);
  }
  fieldset.append(row);
  const answer = () => {
    const picked = inputs.find((i) => i.checked);
    return !picked || picked.value === "" ? [] : [{ valueBoolean: picked.value === "true" }];
  };
  const set = (answers) => {
    const value = answers.find((a) => typeof a.valueBoolean === "boolean");
    const wanted = value ? String(value.valueBoolean) : "";
    for (const input of inputs) input.checked = input.value === wanted;
  };
  return { node: fieldset, answer, set };
}

function numberField(item, integer) {
  const wrapper = el("div", "question number");
  const id = fieldId(item);
  const label = el("label", null, item.text || item.linkId);
  label.htmlFor = id;
  const input = el("input");
  input.type = "number";
  input.id = id;
  input.step = integer ? "1" : "any";
  input.inputMode = integer ? "numeric" : "decimal";
  input.dataset.linkId = item.linkId;
  wrapper.append(label, input);
  const answer = () => {
    const raw = input.value.trim();
    if (!raw || !input.checkValidity()) return [];
    const value = Number(raw);
    if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) return [];
    return [integer ? { valueInteger: value } : { valueDecimal: value }];
  };
  const set = (answers) => {
    const value = answers.map((a) => (integer ? a.valueInteger : a.valueDecimal)).find((v) => typeof v === "number");
    input.value = value === undefined ? "" : String(value);
  };
  return { node: wrapper, answer, input, set };
}

function textField(item, multiline) {
  const wrapper = el("div", "question text");
  const id = fieldId(item);
  const label = el("label", null, item.text || item.linkId);
  label.htmlFor = id;
  const input = el(multiline ? "textarea" : "input");
  if (!multiline) input.type = "text";
  input.id = id;
  input.dataset.linkId = item.linkId;
  wrapper.append(label, input);
  const answer = () => (input.value.trim() ? [{ valueString: input.value.trim() }] : []);
  const set = (answers) => {
    input.value = answers.map((a) => a.valueString).find((v) => typeof v === "string") ?? "";
  };
  return { node: wrapper, answer, set };
}

function dateField(item) {
  const wrapper = el("div", "question date");
  const id = fieldId(item);
  const label = el("label", null, item.text || item.linkId);
  label.htmlFor = id;
  const input = el("input");
  input.type = "date";
  input.id = id;
  input.dataset.linkId = item.linkId;
  wrapper.append(label, input);
  const answer = () => (input.value ? [{ valueDate: input.value }] : []);
  const set = (answers) => {
    input.value = answers.map((a) => a.valueDate).find((v) => typeof v === "string") ?? "";
  };
  return { node: wrapper, answer, set };
}

function choiceField(item) {
  const options = item.answerOption || [];
  if (item.repeats) {
    const fieldset = el("fieldset", "question choice-many");
    fieldset.append(el("legend", null, item.text || item.linkId));
    const row = el("div", "choices");
    const boxes = options.map((option) => {
      const label = el("label", "choice");
      const input = el("input");
      input.type = "checkbox";
      input.dataset.linkId = item.linkId;
      label.append(input, document.createTextNode(` ${optionLabel(option)}`));
      row.append(label);
      return { input, option };
    });
    fieldset.append(row);
    const answer = () => boxes.filter((b) => b.input.checked).map((b) => optionAnswer(b.option)).filter(Boolean);
    const set = (answers) => {
      for (const box of boxes) box.input.checked = answers.some((a) => sameAnswer(box.option, a));
    };
    return { node: fieldset, answer, set };
  }
  const wrapper = el("div", "question choice-one");
  const id = fieldId(item);
  const label = el("label", null, item.text || item.linkId);
  label.htmlFor = id;
  const select = el("select");
  select.id = id;
  select.dataset.linkId = item.linkId;
  const empty = el("option", null, "Unanswered");
  empty.value = "";
  select.append(empty);
  options.forEach((option, i) => {
    const node = el("option", null, optionLabel(option));
    node.value = String(i);
    select.append(node);
  });
  wrapper.append(label, select);
  const answer = () => {
    if (select.value === "") return [];
    const picked = optionAnswer(options[Number(select.value)]);
    return picked ? [picked] : [];
  };
  const set = (answers) => {
    const index = options.findIndex((option) => answers.some((a) => sameAnswer(option, a)));
    select.value = index < 0 ? "" : String(index);
  };
  return { node: wrapper, answer, set };
}

function build(item, depth, fields) {
  if (item.type === "group") {
    const fieldset = el("fieldset", `group depth-${depth}`);
    fieldset.append(el("legend", null, item.text || item.linkId));
    const children = (item.item || []).map((child) => build(child, depth + 1, fields));
    for (const child of children) fieldset.append(child.node);
    const collect = () => {
      const items = children.map((c) => c.collect()).filter(Boolean);
      return items.length ? { linkId: item.linkId, ...(item.text ? { text: item.text } : {}), item: items } : null;
    };
    return { node: fieldset, collect };
  }
  if (item.type === "display") {
    return { node: el("p", "hint", item.text || ""), collect: () => null };
  }
  const makers = {
    boolean: () => booleanField(item),
    integer: () => numberField(item, true),
    decimal: () => numberField(item, false),
    choice: () => choiceField(item),
    "open-choice": () => choiceField(item),
    string: () => textField(item, false),
    text: () => textField(item, true),
    url: () => textField(item, false),
    date: () => dateField(item),
  };
  const maker = makers[item.type];
  if (!maker) {
    return { node: el("p", "hint", `${item.text || item.linkId}: type ${item.type} is not supported here`), collect: () => null };
  }
  const field = maker();
  field.node.dataset.question = item.linkId;
  fields.set(item.linkId, { item, node: field.node, set: field.set, answer: field.answer });
  const collect = () => {
    const answer = field.answer();
    return answer.length ? { linkId: item.linkId, ...(item.text ? { text: item.text } : {}), answer } : null;
  };
  return { node: field.node, collect };
}

/** Every answered item of a QuestionnaireResponse, by linkId (nested groups flattened). */
export function answersByLinkId(response) {
  const out = new Map();
  const walk = (items) => {
    for (const item of items || []) {
      if (Array.isArray(item.answer) && item.answer.length) out.set(item.linkId, item.answer);
      walk(item.item);
      for (const answer of item.answer || []) walk(answer.item);
    }
  };
  walk(response && response.item);
  return out;
}

/**
 * Render the questionnaire's items into container. Returns response(subjectRef, authored), the
 * QuestionnaireResponse of the current answers (questionnaire = url|version); fill(answers), which
 * sets answers (a Map of linkId to FHIR answer arrays); unanswered(), the linkIds with no answer;
 * and fields, a Map of linkId to each question's node.
 */
export function renderQuestionnaire(container, questionnaire) {
  container.replaceChildren();
  if (questionnaire.title) container.append(el("h3", "questionnaire-title", questionnaire.title));
  const fields = new Map();
  const roots = (questionnaire.item || []).map((item) => build(item, 0, fields));
  for (const root of roots) container.append(root.node);
  const canonical = questionnaire.version ? `${questionnaire.url}|${questionnaire.version}` : questionnaire.url;
  const response = (subjectRef, authored) => {
    const items = roots.map((r) => r.collect()).filter(Boolean);
    const qr = {
      resourceType: "QuestionnaireResponse",
      id: "form-response",
      questionnaire: canonical,
      status: "completed",
      subject: { reference: subjectRef },
      authored,
    };
    if (items.length) qr.item = items;
    return qr;
  };
  const fill = (answers) => {
    for (const [linkId, values] of answers) {
      const field = fields.get(linkId);
      if (field && field.set) field.set(values);
    }
  };
  const unanswered = () => [...fields.keys()].filter((linkId) => !fields.get(linkId).answer().length);
  return { response, fill, unanswered, fields };
}
