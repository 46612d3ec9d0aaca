"""Scan results as text, JSON or SARIF 2.1.0."""

from __future__ import annotations

import json
from typing import Any

from atoll.ssot.rules import RULE_NAMES, Finding
from atoll.ssot.scanner import ScanResult, fingerprints

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOP_SYMBOLS = 10
"""Registry symbols the text output lists, least canonical first."""


def _counts(findings: list[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(RULE_NAMES, 0)
    for finding in findings:
        counts[finding.rule] += 1
    return counts


def as_text(result: ScanResult) -> str:
    """Human-readable: one line per finding, then the metrics."""
    lines = [
        f"{f.file}:{f.line}:{f.column}: {f.rule} {f.name} [{f.severity}] {f.message}"
        + (f"\n    fix: {f.fix}" if f.fix else "")
        for f in result.new
    ]
    for path, error in result.syntax_errors:
        lines.append(f"{path}: not scanned ({error})")
    counts = _counts(result.new)
    summary = ", ".join(f"{rule} {count}" for rule, count in counts.items())
    baseline_note = ""
    if len(result.new) != len(result.findings):
        baseline_note = f" ({len(result.findings) - len(result.new)} more in the baseline)"
    lines += [
        f"{len(result.new)} finding(s){baseline_note} in {result.files} files "
        f"in {result.duration:.2f}s: {summary}",
        f"canonical import usage: {result.metrics['canonical_usage_pct']}%, "
        f"fragmentation: {result.metrics['fragmentation']}",
    ]
    symbols = sorted(
        result.metrics["symbols"].items(),
        key=lambda item: (item[1]["canonical_usage_pct"], -item[1]["imports"], item[0]),
    )
    for symbol, metric in symbols[:TOP_SYMBOLS]:
        lines.append(
            f"  {symbol}: {metric['canonical_usage_pct']}% canonical "
            f"({metric['canonical_imports']} of {metric['imports']} imports, "
            f"{len(metric['import_paths'])} path(s))"
        )
    if len(symbols) > TOP_SYMBOLS:
        lines.append(f"  … {len(symbols) - TOP_SYMBOLS} more symbol(s) (--format json)")
    return "\n".join(lines)


def as_json(result: ScanResult) -> str:
    """Everything, as JSON."""
    prints = dict(zip(map(id, result.findings), fingerprints(result.findings), strict=True))
    document: dict[str, Any] = {
        "files": result.files,
        "duration_s": round(result.duration, 3),
        "counts": _counts(result.new),
        "findings": [{**f.to_dict(), "fingerprint": prints[id(f)]} for f in result.new],
        "baselined": len(result.findings) - len(result.new),
        "syntax_errors": [{"file": p, "error": e} for p, e in result.syntax_errors],
        "metrics": result.metrics,
    }
    return json.dumps(document, indent=2)


def as_sarif(result: ScanResult) -> str:
    """SARIF 2.1.0 (GitHub code scanning)."""
    prints = dict(zip(map(id, result.findings), fingerprints(result.findings), strict=True))
    rules = [
        {
            "id": rule,
            "name": name,
            "shortDescription": {"text": name.replace("-", " ")},
            "helpUri": "https://atoll.dev/docs/ssot#" + rule.lower(),
        }
        for rule, name in RULE_NAMES.items()
    ]
    results = [
        {
            "ruleId": f.rule,
            "level": "error" if f.severity == "error" else "warning",  # a rule's severity
            "message": {"text": f.message + (f" Fix: {f.fix}" if f.fix else "")},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.file},
                        "region": {"startLine": f.line, "startColumn": f.column},
                    }
                }
            ],
            "partialFingerprints": {"ssot/v1": prints[id(f)]},
            **(
                {
                    "relatedLocations": [
                        {
                            "id": index,
                            "physicalLocation": {
                                "artifactLocation": {"uri": file},
                                "region": {"startLine": line},
                            },
                        }
                        for index, (file, line) in enumerate(f.related)
                    ]
                }
                if f.related
                else {}
            ),
        }
        for f in result.new
    ]
    document = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "atoll-ssot",
                        "informationUri": "https://atoll.dev",
                        "rules": rules,
                    }
                },
                "results": results,
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "toolExecutionNotifications": [
                            {
                                "level": "warning",
                                "message": {"text": f"not scanned: {error}"},
                                "locations": [
                                    {"physicalLocation": {"artifactLocation": {"uri": path}}}
                                ],
                            }
                            for path, error in result.syntax_errors
                        ],
                    }
                ],
            }
        ],
    }
    return json.dumps(document, indent=2)
