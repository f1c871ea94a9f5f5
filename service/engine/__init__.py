"""The rule engine: reference data, conditions over named facts, rules and their evaluation."""
