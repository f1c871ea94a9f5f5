"""Every fact a rule may name, with its kind: questionnaire items, coded findings and derived facts."""

from __future__ import annotations

from service.engine.conditions import FactSpec
from service.engine.reference import ReferenceData

_ITEM_KINDS = {"boolean": "boolean", "integer": "number", "decimal": "number", "string": "string"}

# Facts computed from the record rather than asked (see service/facts/extract.py).
DERIVED = (
    FactSpec("twitching", "boolean", "Twitching reported"),
    FactSpec("age-years", "number", "Age (years)"),
    FactSpec("sex", "choice", "Sex", ("male", "female", "other", "unknown")),
    FactSpec("multiple-body-regions", "boolean", "Twitching in more than one body region"),
    FactSpec("abnormal-lab-on-record", "boolean", "An abnormal lab result on record"),
)


def fact_registry(reference: ReferenceData) -> dict[str, FactSpec]:
    """All nameable facts, keyed by name."""
    registry: dict[str, FactSpec] = {}
    for item in reference.questionnaire.items.values():
        kind = ("multi" if item.repeats else "choice") if item.type == "choice" else _ITEM_KINDS[item.type]
        registry[item.link_id] = FactSpec(item.link_id, kind, item.label, item.options)
    for spec in DERIVED:
        registry[spec.name] = spec
    for drug_fact, drug_label in reference.medications.facts.items():
        if drug_fact in registry:
            raise ValueError(f"medications fact {drug_fact!r} is already a question or derived fact")
        registry[drug_fact] = FactSpec(drug_fact, "boolean", drug_label)
    for fact in reference.findings:
        if fact not in registry:
            label = reference.finding_labels.get(fact)
            if label is None:
                raise ValueError(
                    f"findings {fact}: neither a question nor a derived fact, so it needs a label"
                )
            registry[fact] = FactSpec(fact, "boolean", label)
        elif registry[fact].kind != "boolean":
            raise ValueError(f"finding {fact!r} maps onto a non-boolean question")
    return registry
