"""Streaming guardrails: rules that check a model's answer while it streams.

The answer arrives in small chunks. A :class:`Rule` keeps its own state
between chunks, so checking a chunk costs O(len(chunk)) plus a bounded window
(a regex's longest match, at most a few hundred characters), never a rescan
of the text so far. The only O(n) work allowed is once, at the end
(:meth:`Rule.finish`), e.g. ``json.loads`` of the whole answer.

Contracts every rule keeps (``tests/client/test_guardrails.py`` checks them):

* **Chunking does not matter.** The same text fed in 1-char chunks, 7-char
  chunks or all at once yields the same violations (same rule, severity,
  message, offsets, excerpt, ``final`` flag). Violations found by ``feed``
  may only come later with small chunks (a pattern is confirmed once enough
  text follows its start), never differently.
* **Each distinct violation is reported once** (per rule and label): a
  pattern category or a custom regex fires once per stream, not at every
  occurrence, so a looping model cannot flood the caller.
* Offsets are char offsets into the whole stream text; ``end`` is exclusive.

Severities (:data:`SEVERITIES`): ``warning`` is an event only; ``error`` asks
the caller to retry as a model failure; ``fatal`` asks it to stop, no retry.

Rules are specs: :meth:`Rule.fresh` / :meth:`Guardrails.fresh` give reset
copies, one per stream. Bad arguments raise ``ValueError("l0: ...")``.

The package: :mod:`~l0.client.guardrails.framework` (severities, rules, the
scanners), :mod:`~l0.client.guardrails.formats` (JSON, strict JSON, Markdown,
LaTeX), :mod:`~l0.client.guardrails.patterns` (pattern categories, custom
regexes, zero output), :mod:`~l0.client.guardrails.presets`. Everything public
is here, as ``l0.guardrails.<name>``.
"""
from l0.client.guardrails.formats import json_structure, latex, markdown, strict_json
from l0.client.guardrails.framework import (EXCERPT_MAX, SEVERITIES, Guardrails, Rule, Violation, combine,
                                            worst)
from l0.client.guardrails.patterns import (PATTERN_CATEGORIES, PATTERN_SEVERITY, custom, patterns,
                                           zero_output)
from l0.client.guardrails.presets import PRESETS, as_guardrails, preset

__all__ = ["EXCERPT_MAX", "SEVERITIES", "Guardrails", "Rule", "Violation", "combine", "worst", "json_structure",
           "strict_json", "markdown", "latex", "PATTERN_CATEGORIES", "PATTERN_SEVERITY", "patterns", "custom",
           "zero_output", "PRESETS", "preset", "as_guardrails"]
