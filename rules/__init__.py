"""Rules are data: YAML files in this directory (or ``CDP_RULES_DIR``), validated at load by ``rules.loader``."""
