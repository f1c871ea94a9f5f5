"""Plain typed facts about one patient, extracted from validated FHIR resources."""
