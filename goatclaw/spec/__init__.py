"""Reading pipeline and project files: loader (YAML), schema (JSON Schema), model (frozen data)."""
