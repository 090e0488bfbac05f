"""The report's first section: each finding of the papers with its verdict, rule and numbers."""

from __future__ import annotations

from collections.abc import Sequence

from ftlens.report.html import Section, Text, esc
from ftlens.report.inputs import Source
from ftlens.report.sections.common import Labels, read_json


def section(sources: Sequence[Source], label: Labels) -> Section | None:
    per_source = {s.name: read_json(s.findings) for s in sources if s.findings is not None}
    per_source = {k: v for k, v in per_source.items() if v}
    if not per_source:
        return None
    s = Section("Findings of the papers, tested on this run" if len(per_source) == 1 else
                "Findings of the papers, tested on each experiment",
                "Each verdict is computed from the numbers by the stated rule; nothing is written in advance. "
                "Small models and data can legitimately disagree with the papers.")
    if len(per_source) == 1:
        findings = next(iter(per_source.values()))
        rows = []
        for f in findings:
            cls, verdict = _verdict(f)
            rows.append(f"<tr><td>{esc(f['claim'])}<br/><span class='caption'>{esc(f['source'])}</span></td>"
                        f"<td class='{cls}'>{verdict}</td><td>{esc(f['rule'])}</td><td>{esc(_numbers(f))}</td></tr>")
        s.blocks.append(Text("<table class='text'><thead><tr><th>claim</th><th>verdict</th><th>rule</th><th>numbers</th></tr>"
                             f"</thead><tbody>{''.join(rows)}</tbody></table>"))
        return s
    claims: dict[str, str] = {}
    for findings in per_source.values():
        for f in findings:
            claims.setdefault(f["id"], f["claim"])
    head = "".join(f"<th>{esc(name)}</th>" for name in per_source)
    rows = []
    for fid, claim in claims.items():
        cells = []
        for findings in per_source.values():
            f = next((x for x in findings if x["id"] == fid), None)
            if f is None:
                cells.append("<td class='na'>–</td>")
                continue
            cls, verdict = _verdict(f)
            cells.append(f"<td class='{cls}' title='{esc(_numbers(f))}'>{verdict}</td>")
        rows.append(f"<tr><td>{esc(claim)}</td>{''.join(cells)}</tr>")
    s.blocks.append(Text(f"<table class='text'><thead><tr><th>claim</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"))
    return s


def _verdict(f: dict) -> tuple[str, str]:
    """(css class, text) of a finding's verdict (``held`` / ``did not hold`` / ``inconclusive``)."""
    verdict = f.get("verdict")
    if verdict is None:  # written before verdicts had three values
        held = f.get("held")
        verdict = "held" if held is True else ("did not hold" if held is False else "inconclusive")
    return {"held": "held", "did not hold": "nothold"}.get(verdict, "na"), verdict


def _numbers(f: dict) -> str:
    """The statistic with its interval, the test, the reason of the verdict (when it has one: why
    it is inconclusive, or the equivalence margin a 'did not hold' rests on), then the numbers."""
    parts = []
    stat, interval = f.get("statistic"), f.get("interval")
    if stat is not None:
        text = f"statistic = {stat:.4g}"
        if interval and None not in interval:
            text += f" [{interval[0]:.4g}, {interval[1]:.4g}]"
        parts.append(text)
    if f.get("test"):
        parts.append(f"{f['test']}, n = {f.get('n_points')}")
    if f.get("reason"):
        parts.append(f"{f.get('verdict', 'inconclusive')} because: {f['reason']}")
    parts.extend(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in f["numbers"].items())
    return "; ".join(parts)


