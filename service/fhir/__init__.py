"""FHIR at the edge: find the resources the rules read, and validate them with fhir.resources (R4B)."""
