"""The hook request an EHR would send for one patient's Bundle: every prefetch template filled."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

ORDER_HOOKS = ("order-select", "order-sign")


def hook_request_for_bundle(
    bundle: Mapping[str, Any],
    hook: str,
    templates: Mapping[str, str],
    hook_instance: str | None = None,
    user_id: str = "Practitioner/example",
) -> dict[str, Any]:
    """Fill each template from the Bundle: a read gets the resource (or null), a search a searchset."""
    resources = [
        e["resource"]
        for e in bundle.get("entry") or ()
        if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]
    patient: dict[str, Any] = next((r for r in resources if r.get("resourceType") == "Patient"), {})
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        kind = str(template).replace("?", "/").split("/")[0]
        found = [r for r in resources if r.get("resourceType") == kind]
        if "?" in str(template):
            searchset: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(found)}
            if found:
                searchset["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in found]
            prefetch[key] = searchset
        else:
            prefetch[key] = found[0] if found else None  # CDS Hooks: null when there is no data
    context: dict[str, Any] = {"userId": user_id, "patientId": patient.get("id", "unknown")}
    if hook in ORDER_HOOKS:
        drafts = [
            r
            for r in resources
            if r.get("status") == "draft" and str(r.get("resourceType")).endswith("Request")
        ]
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in drafts],
        }
        if hook == "order-select":
            context["selections"] = [f"{r['resourceType']}/{r.get('id')}" for r in drafts]
    return {
        "hook": hook,
        "hookInstance": hook_instance or str(uuid.uuid4()),
        "context": context,
        "prefetch": prefetch,
    }
