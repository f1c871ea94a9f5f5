"""HTTP blueprints, one per area."""
