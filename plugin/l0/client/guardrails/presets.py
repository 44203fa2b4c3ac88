"""The guardrails presets (``minimal``, ``recommended``, ``strict``) and how a
user's setting becomes a :class:`~l0.client.guardrails.framework.Guardrails`."""
from __future__ import annotations

from l0.client.guardrails.formats import json_structure, latex, markdown, strict_json
from l0.client.guardrails.framework import Guardrails, Rule, combine
from l0.client.guardrails.patterns import patterns, zero_output

# Rule name -> severity, per preset; preset() builds from this table.
PRESETS: dict[str, list[tuple[str, str]]] = {
    "minimal": [
        ("json", "error"), ("zero_output", "error"), ("pattern:special_tokens", "error"),
    ],
    "recommended": [
        ("json", "error"), ("zero_output", "error"), ("pattern:special_tokens", "error"),
        ("markdown", "warning"), ("latex", "warning"),
        ("pattern:placeholder", "error"), ("pattern:instruction_leak", "error"),
        ("pattern:meta_commentary", "warning"),
    ],
    "strict": [
        ("json", "error"), ("strict_json", "error"), ("zero_output", "error"),
        ("pattern:special_tokens", "error"), ("markdown", "error"), ("latex", "error"),
        ("pattern:placeholder", "error"), ("pattern:instruction_leak", "error"),
        ("pattern:refusal", "error"), ("pattern:meta_commentary", "error"), ("pattern:hedging", "warning"),
    ],
}
_BUILDERS = {"json": json_structure, "strict_json": strict_json, "zero_output": zero_output,
             "markdown": markdown, "latex": latex}


def _build(name: str, severity: str) -> Rule:
    if name.startswith("pattern:"):
        return patterns(name[len("pattern:"):], severity=severity)
    return _BUILDERS[name](severity=severity)


def preset(name: str) -> Guardrails:
    """Guardrails for a named preset: ``minimal``, ``recommended`` or ``strict``
    (the rules and severities of :data:`PRESETS`)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"l0: unknown guardrails preset {name!r} (expected one of: {', '.join(PRESETS)})")
    return Guardrails(_build(rule, severity) for rule, severity in PRESETS[name])


def as_guardrails(spec: object) -> Guardrails | None:
    """Normalise a user's guardrails setting.

    None -> None; a preset name -> :func:`preset`; a :class:`Guardrails` ->
    itself; a :class:`Rule` -> Guardrails of it; a list/tuple mixing Rules,
    preset names and Guardrails -> one Guardrails, where a later rule with the
    same name replaces an earlier one in its place (``["recommended",
    markdown("error")]`` raises markdown to error). The result is a spec:
    callers take ``.fresh()`` per stream.
    """
    if spec is None:
        return None
    return combine(spec, preset, "guardrails", "a preset name")
