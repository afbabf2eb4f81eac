"""The configuration: frozen sections (schema), field rules (validators), TOML loading."""
