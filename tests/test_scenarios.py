"""Clinical scenarios: realistic patients across the pathways, with their cards and guideline sections.

Each scenario is one patient (age band, sex, answers, coded conditions, medicines, results) with
the cards a clinician should see, in order, with their indicators, the priority of each draft
order, and the guideline section that justifies the expectation. A failure names the scenario.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import card_rules, topic
from tests.patients import ALL_NO, ICD10CM, SNOMED, bundle, condition, lab, medication


def answers(**changes: Any) -> dict[str, Any]:
    """Every core red flag answered no, 5 days of thigh twitching, then the changes (underscores: hyphens)."""
    out: dict[str, Any] = {**ALL_NO, "duration-days": 5, "body-areas": ["thigh"]}
    out.update({k.replace("_", "-"): v for k, v in changes.items()})
    return out


@dataclass(frozen=True)
class Scenario:
    """One patient and what the cards must say about them."""

    id: str
    birth: str
    gender: str
    answers: dict[str, Any] | None
    cards: list[tuple[str, str]]  # (rule id, indicator), in card order
    why: str  # the guideline section that justifies the cards
    extra: list[dict[str, Any]] = field(default_factory=list)
    orders: dict[str, str] = field(default_factory=dict)  # order code -> priority, on any card
    mentions: list[str] = field(default_factory=list)  # text shown somewhere in the cards
    version: str = "1.1.0"


def _s(
    sid: str,
    birth: str,
    gender: str,
    ans: dict[str, Any] | None,
    cards: list[tuple[str, str]],
    why: str,
    **kw: Any,
) -> Scenario:
    return Scenario(sid, birth, gender, ans, cards, why, **kw)


def _cond(pid: str, system: str, code: str, display: str, n: int = 1) -> dict[str, Any]:
    return condition(pid, n, system, code, display)


REASSURE = [("likely-benign", "info")]
MND = ("motor-neuron-red-flags", "critical")
CES = ("cauda-equina", "critical")
NEURO = "308474002"
EMG = "95886"
MRI = "30679-5"
PHYSIO = "308447003"

SCENARIOS = [
    # --- age bands -------------------------------------------------------------------------
    _s(
        "child-12-no-flags",
        "2014-03-01",
        "male",
        answers(),
        [("under-16", "info")],
        "NICE NG127 scope: children's recommendations are for under-16s; the adult rules are not applied",
    ),
    _s(
        "child-14-weakness",
        "2012-03-01",
        "female",
        answers(weakness=True),
        [("under-16", "critical")],
        "A red flag below 16 raises an urgent paediatric card, never hidden (NG127 scope)",
        mentions=["urgent paediatric"],
    ),
    _s(
        "child-15-saddle-numbness",
        "2011-02-01",
        "male",
        answers(saddle_numbness=True),
        [("under-16", "critical")],
        "Sphincter or saddle features below 16: same-day paediatric assessment (NG127 scope; CES pathway)",
        mentions=["today"],
    ),
    _s(
        "teen-16-weakness-orthopnoea",
        "2010-05-05",
        "female",
        answers(weakness=True, breathing=True),
        [MND],
        "NG127 adult recommendations from 16; weakness with breathlessness lying flat: refer immediately",
        orders={NEURO: "stat", EMG: "urgent"},
    ),
    _s(
        "teen-17-full-cauda-equina",
        "2009-08-08",
        "male",
        answers(saddle_numbness=True, bladder_bowel=True, radiating_pain=True, numbness_tingling=True),
        [CES, ("distal-sensory-symptoms", "warning"), ("lumbar-nerve-root", "warning")],
        "NG127 from 16: suspected CES, refer immediately, emergency MRI; nothing routine beside it (GIRFT)",
        orders={MRI: "stat"},
        mentions=["not offered now"],
    ),
    _s(
        "adult-30-woman-no-flags",
        "1996-01-01",
        "female",
        answers(),
        REASSURE,
        "NG127 tics and involuntary movements: no referral without wasting and weakness; examine first",
    ),
    _s(
        "adult-75-man-no-flags-10-days",
        "1951-04-04",
        "male",
        answers(duration_days=10),
        REASSURE,
        "NG42: MND may first show as twitching, so reassurance only with an examination; Blexrud 1993",
        mentions=["Examine first", "If the examination is normal"],
    ),
    _s(
        "adult-45-no-answers",
        "1981-01-01",
        "female",
        {"duration-days": 5},
        [("unanswered-red-flag-questions", "info")],
        "Unanswered is unknown, not no: no reassurance until asked",
    ),
    # --- each motor red flag alone ---------------------------------------------------------
    _s(
        "weakness-alone",
        "1962-01-01",
        "male",
        answers(weakness=True),
        [MND],
        "NG42 recognition: refer without delay naming possible MND (urgent)",
        orders={NEURO: "urgent", EMG: "urgent"},
    ),
    _s(
        "progressive-weakness-alone",
        "1960-01-01",
        "female",
        answers(weakness_progressive=True),
        [MND],
        "NG127 slowly progressive limb weakness: MND route",
        orders={NEURO: "urgent"},
    ),
    _s("wasting-alone", "1958-01-01", "male", answers(atrophy=True), [MND], "NG42 muscle problems: wasting"),
    _s(
        "tongue-twitching",
        "1955-01-01",
        "female",
        answers(body_areas=["tongue"]),
        [MND],
        "NG42 bulbar presentation: tongue fasciculations",
    ),
    _s(
        "slurred-speech",
        "1957-01-01",
        "male",
        answers(speech=True),
        [MND],
        "NG42 bulbar presentation: speech",
    ),
    _s(
        "swallowing",
        "1953-01-01",
        "female",
        answers(swallowing=True),
        [MND],
        "NG42 bulbar; NG127: swallowing impairment, refer urgently",
        orders={NEURO: "urgent"},
    ),
    _s(
        "orthopnoea",
        "1950-01-01",
        "male",
        answers(breathing=True),
        [MND],
        "NG127: breathless lying flat, refer immediately (stat)",
        orders={NEURO: "stat"},
    ),
    # --- NG42 features and coded weakness --------------------------------------------------
    _s(
        "cramps-alone",
        "1975-01-01",
        "male",
        answers(cramps=True),
        [("motor-neuron-features", "warning")],
        "NG42 lists cramps; MND Association: common alone; examine before reassuring",
    ),
    _s(
        "stiffness-and-falls",
        "1949-01-01",
        "female",
        answers(stiffness=True, falls=True),
        [("motor-neuron-features", "warning")],
        "NG42 muscle problems (stiffness) and functional effects (falls)",
    ),
    _s(
        "behaviour-change",
        "1952-01-01",
        "male",
        answers(cognitive_change=True),
        [("motor-neuron-features", "warning")],
        "NG42 cognitive features may come first",
    ),
    _s(
        "weakness-with-cramps",
        "1961-01-01",
        "female",
        answers(weakness=True, cramps=True),
        [MND],
        "NG42: cramps count as evidence on the MND card",
        mentions=["Muscle cramps: **yes**"],
    ),
    _s(
        "m62-81-alone-88",
        "1938-01-01",
        "female",
        {k: v for k, v in answers().items() if k != "weakness"},
        [("coded-generalized-weakness", "warning"), ("unanswered-red-flag-questions", "info")],
        "ICD-10-CM M62.81 is generalised (rehabilitation) weakness: examine, not a critical MND card",
        extra=[_cond("m62-81-alone-88", ICD10CM, "M62.81", "Muscle weakness (generalized)")],
    ),
    # --- known motor neuron disease --------------------------------------------------------
    _s(
        "als-on-record-weakness",
        "1954-01-01",
        "male",
        answers(weakness=True),
        [("known-motor-neuron-disease", "warning")],
        "NG42 organisation of care: known MND goes to the specialist MND team, no new possible-MND referral",
        extra=[_cond("als-on-record-weakness", SNOMED, "86044005", "Amyotrophic lateral sclerosis")],
        mentions=["specialist MND team"],
    ),
    _s(
        "mnd-on-record-orthopnoea",
        "1951-01-01",
        "female",
        answers(breathing=True),
        [("known-motor-neuron-disease", "critical")],
        "Known MND with orthopnoea: immediate respiratory assessment (NG127)",
        extra=[_cond("mnd-on-record-orthopnoea", ICD10CM, "G12.20", "Motor neuron disease, unspecified")],
    ),
    # --- cauda equina ----------------------------------------------------------------------
    _s(
        "saddle-numbness-leg-pain-unasked",
        "1976-01-01",
        "female",
        {
            k: v
            for k, v in answers(saddle_numbness=True).items()
            if k not in ("radiating-pain", "numbness-tingling")
        },
        [CES, ("unanswered-red-flag-questions", "info")],
        "GIRFT CES pathway: altered perineal sensation is itself a CES feature; emergency MRI",
        orders={MRI: "stat"},
    ),
    _s(
        "new-incontinence-alone",
        "1968-01-01",
        "male",
        answers(bladder_bowel=True),
        [CES],
        "NG127 / GIRFT: new bladder or bowel dysfunction, refer immediately",
        orders={MRI: "stat"},
    ),
    _s(
        "sexual-dysfunction-with-sciatica",
        "1979-01-01",
        "male",
        answers(sexual_dysfunction=True, radiating_pain=True),
        [CES, ("lumbar-nerve-root", "warning")],
        "NG127: radiating leg pain with new sexual dysfunction, refer immediately; nothing routine beside it",
        orders={MRI: "stat"},
    ),
    _s(
        "sexual-dysfunction-alone",
        "1979-01-01",
        "male",
        answers(sexual_dysfunction=True),
        REASSURE,
        "GIRFT: back pain with sexual dysfunction as the only other feature is unlikely to be CES",
    ),
    # --- imaging: nerve root, sensory, myelopathy ------------------------------------------
    _s(
        "sciatica-no-red-flags",
        "1985-01-01",
        "male",
        answers(radiating_pain=True),
        [("lumbar-nerve-root", "warning")],
        "NG59 1.1.4: no routine imaging in non-specialist settings; physiotherapy",
        orders={PHYSIO: "routine"},
    ),
    _s(
        "distal-tingling",
        "1970-01-01",
        "female",
        answers(numbness_tingling=True),
        [("distal-sensory-symptoms", "warning")],
        "NG127 sensory symptoms: B12, thyroid, renal function, glucose",
        orders={"2132-9": "routine", "3016-3": "routine", "24321-2": "routine"},
    ),
    _s(
        "gait-problems",
        "1956-01-01",
        "male",
        answers(coordination=True),
        [("possible-myelopathy", "warning")],
        "CKS neck pain / NG127 gait: urgent neurology naming possible myelopathy, no lumbar MRI",
        orders={NEURO: "urgent"},
    ),
    _s(
        "clumsy-hands-and-weakness",
        "1959-01-01",
        "female",
        answers(hand_clumsiness=True, weakness=True),
        [MND, ("checklist-two-or-more", "warning"), ("possible-myelopathy", "warning")],
        "Cervical spondylosis is the commonest MND mimic: both cards (update-2 §3.4)",
        orders={NEURO: "urgent"},
    ),
    # --- spreading and duration ------------------------------------------------------------
    _s(
        "calf-and-eyelid",
        "1990-01-01",
        "female",
        answers(body_areas=["calf", "eyelid"]),
        REASSURE,
        "Seed 003: eyelid myokymia is common and benign; it does not make calf twitching spreading",
    ),
    _s(
        "calf-and-arm",
        "1990-01-01",
        "male",
        answers(body_areas=["calf", "arm"]),
        [("spreading-twitching", "warning")],
        "Seed 003: spreading to several areas, neurology within 2-3 weeks (routine referral)",
        orders={NEURO: "routine"},
    ),
    _s(
        "three-weeks-worsening",
        "1983-01-01",
        "female",
        answers(duration_days=21, worsening=True),
        [("persistent-twitching", "warning")],
        "Seeds 000, 001, 003: more than 2 weeks or worsening, blood tests",
    ),
    # --- medicines -------------------------------------------------------------------------
    _s(
        "on-pyridostigmine",
        "1972-01-01",
        "female",
        answers(),
        [("medication-fasciculation-cause", "info")],
        "Fasciculation causes review: acetylcholinesterase inhibitors",
        mentions=["pyridostigmine; matched by name"],
        extra=[medication("on-pyridostigmine", 1, "Pyridostigmine 60 MG Oral Tablet")],
    ),
    _s(
        "on-salbutamol-new-medicine",
        "1995-01-01",
        "male",
        answers(new_medication=True),
        [("new-medication", "warning")],
        "Seeds 001/002 and the review: the new-medication card names salbutamol",
        mentions=["salbutamol; matched by name"],
        extra=[
            medication("on-salbutamol-new-medicine", 1, "Salbutamol 100 MCG/ACTUAT Inhaler", statement=True)
        ],
    ),
    _s(
        "low-potassium-on-furosemide",
        "1948-01-01",
        "female",
        answers(),
        [("lab-low-potassium", "warning")],
        "Most hypokalaemia results from diuretics: the card names furosemide (RxNorm 4603, HL7 PDDI-CDS)",
        mentions=["furosemide; RxNorm 4603"],
        extra=[
            medication("low-potassium-on-furosemide", 1, "Furosemide 20 MG", rxnorm="4603"),
            lab("low-potassium-on-furosemide", 1, "2823-3", 3.0, "mmol/L", 3.5, 5.1),
        ],
    ),
    _s(
        "low-potassium-on-bendroflumethiazide",
        "1946-01-01",
        "male",
        answers(),
        [("lab-low-potassium", "warning")],
        "Thiazide diuretics lower potassium: named by ingredient name (no verified code)",
        mentions=["bendroflumethiazide; matched by name"],
        extra=[
            medication("low-potassium-on-bendroflumethiazide", 1, "Bendroflumethiazide 2.5mg tablets"),
            lab("low-potassium-on-bendroflumethiazide", 1, "2823-3", 3.2, "mmol/L", 3.5, 5.1),
        ],
    ),
    _s(
        "low-magnesium-on-lansoprazole",
        "1950-01-01",
        "female",
        answers(),
        [("lab-low-magnesium", "warning")],
        "FDA 2011: long-term PPIs can cause low magnesium; the card names lansoprazole (RxNorm 17128)",
        mentions=["lansoprazole; RxNorm 17128"],
        extra=[
            medication("low-magnesium-on-lansoprazole", 1, "Lansoprazole 30 MG", rxnorm="17128"),
            lab("low-magnesium-on-lansoprazole", 1, "19123-9", 1.4, "mg/dL", 1.7, 2.2),
        ],
    ),
    _s(
        "cramps-on-atorvastatin",
        "1958-01-01",
        "male",
        answers(cramps=True),
        [("motor-neuron-features", "warning")],
        "Statin-associated muscle symptoms: the statin is named (AoMRC: CK for persistent symptoms)",
        mentions=["atorvastatin; RxNorm 83367"],
        extra=[medication("cramps-on-atorvastatin", 1, "Atorvastatin 20 MG Oral Tablet", rxnorm="83367")],
    ),
    _s(
        "medicine-by-unsent-reference",
        "1980-01-01",
        "female",
        answers(),
        [("data", "warning")],
        "Nothing is silent: a medicine that cannot be read is on the data card, and reassurance is withheld",
        extra=[
            {
                "resourceType": "MedicationRequest",
                "id": "mr-ref",
                "status": "active",
                "intent": "order",
                "medicationReference": {"reference": "Medication/med-77"},
                "subject": {"reference": "Patient/medicine-by-unsent-reference"},
            }
        ],
        mentions=["named only by a reference"],
    ),
    # --- known diagnoses -------------------------------------------------------------------
    _s(
        "restless-legs-on-record",
        "1964-01-01",
        "female",
        answers(),
        [("restless-legs-pattern", "info")],
        "IRLSSG / AASM 2025: restless legs evaluation; not a red flag",
        extra=[_cond("restless-legs-on-record", ICD10CM, "G25.81", "Restless legs syndrome")],
    ),
    _s(
        "hypothyroid-on-record",
        "1966-01-01",
        "female",
        answers(),
        [("known-diagnoses", "info")],
        "Seed 000 / NG127: thyroid dysfunction among the causes; check thyroid function is current",
        extra=[_cond("hypothyroid-on-record", ICD10CM, "E03.9", "Hypothyroidism, unspecified")],
    ),
    _s(
        "ckd-on-record",
        "1944-01-01",
        "male",
        answers(),
        [("known-diagnoses", "info")],
        "Seed 000 / NG127: renal function in the work-up; CKD makes electrolyte disturbance likelier",
        extra=[_cond("ckd-on-record", ICD10CM, "N18.4", "Chronic kidney disease, stage 4 (severe)")],
    ),
    _s(
        "past-ces-new-retention",
        "1971-01-01",
        "male",
        answers(bladder_bowel=True),
        [CES, ("known-diagnoses", "info")],
        "GIRFT: new or deteriorating features after CES still take the emergency route",
        orders={MRI: "stat"},
        extra=[_cond("past-ces-new-retention", ICD10CM, "G83.4", "Cauda equina syndrome")],
    ),
    # --- combinations ----------------------------------------------------------------------
    _s(
        "everything-at-once",
        "1952-01-01",
        "male",
        answers(weakness=True, breathing=True, saddle_numbness=True, radiating_pain=True, coordination=True),
        [
            CES,
            MND,
            ("checklist-two-or-more", "warning"),
            ("lumbar-nerve-root", "warning"),
            ("possible-myelopathy", "warning"),
        ],
        "Emergencies first (CES stat MRI, MND stat referral); the myelopathy referral joins the MND one",
        orders={MRI: "stat", NEURO: "stat", EMG: "urgent"},
    ),
    _s(
        "version-1-0-0-weakness",
        "1963-01-01",
        "female",
        answers(weakness=True),
        [MND],
        "Answers to questionnaire 1.0.0 are still read",
        version="1.0.0",
    ),
]


def _priorities(cards: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for card in cards:
        for suggestion in card.get("suggestions", []):
            resource = suggestion["actions"][0]["resource"]
            out[resource["code"]["coding"][0]["code"]] = resource["priority"]
    return out


def test_enough_scenarios() -> None:
    """At least 40 patients, both sexes, every age band, unique ids."""
    assert len(SCENARIOS) >= 40
    assert len({s.id for s in SCENARIOS}) == len(SCENARIOS)
    assert {s.gender for s in SCENARIOS} == {"male", "female"}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_scenario(client: FlaskClient, scenario: Scenario) -> None:
    """The patient gets exactly the expected cards, priorities and evidence."""
    data = bundle(
        scenario.id, scenario.birth, scenario.gender, scenario.answers, scenario.extra, scenario.version
    )
    response = client.post("/evaluate", json=data)
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    where = f"{scenario.id} ({scenario.why})"
    expected = [("dataquality" if rule == "data" else topic(rule)) for rule, _ in scenario.cards]
    assert card_rules(cards) == expected, where
    assert [c["indicator"] for c in cards] == [i for _, i in scenario.cards], where
    priorities = _priorities(cards)
    for code, priority in scenario.orders.items():
        assert priorities.get(code) == priority, f"{where}: order {code}"
    shown = re.sub(r"\\(.)", r"\1", "\n".join(c["detail"] for c in cards))
    for text in scenario.mentions:
        assert text in shown, f"{where}: {text!r} not shown"
    # Never reassure beside a red flag, a known diagnosis or an abnormal or unread result.
    if topic("likely-benign") in card_rules(cards):
        assert len(cards) == 1, where
    # No routine order beside an emergency.
    if topic("cauda-equina") in card_rules(cards):
        assert "routine" not in priorities.values(), where
