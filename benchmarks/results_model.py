"""Figures, goals and sections: what every measurement returns and run.py renders."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from .baseline import COMMIT, OLD
from .common import summary


@dataclass
class Goal:
    text: str                            # as the issue states it, e.g. ">= 0.97"
    check: Callable[[float], bool]       # applied to the median

    def verdict(self, median: float | None) -> str:
        if median is None:
            return "n/a"
        return "met" if self.check(median) else "MISSED"


def at_least(x: float, text: str | None = None) -> Goal:
    return Goal(text or f">= {x:g}", lambda v: v >= x)


def at_most(x: float, text: str | None = None) -> Goal:
    return Goal(text or f"<= {x:g}", lambda v: v <= x)


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    values: list[float]
    goal: Goal | None = None
    digits: int = 3
    old: str = ""                        # the figure at baseline.COMMIT, as text

    def to_dict(self) -> dict:
        s = summary(self.values)
        out = {"key": self.key, "label": self.label, "unit": self.unit, **s}
        if self.old:
            out["old"] = self.old
        if self.goal is not None:
            out["goal"] = self.goal.text
            out["verdict"] = self.goal.verdict(s["median"])
        return out


@dataclass
class Section:
    key: str
    title: str
    method: str                           # one paragraph: how it was measured
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # per-run details for the JSON file
    seconds: float = 0.0
    error: str | None = None

    def add(self, key: str, label: str, unit: str, values: list, goal: Goal | None = None,
            digits: int = 3) -> Figure:
        fig = Figure(key, label, unit, [v for v in values if v is not None], goal, digits,
                     OLD.get(f"{self.key}.{key}", ""))
        self.figures.append(fig)
        return fig

    def to_dict(self) -> dict:
        return {"key": self.key, "title": self.title, "method": self.method,
                "figures": [f.to_dict() for f in self.figures], "notes": self.notes,
                "seconds": round(self.seconds, 1), "error": self.error, "raw": self.raw}


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(1, digits - 1)}f}".rstrip("0").rstrip(".")


def markdown(sections: list[Section], meta: dict) -> str:
    lines = ["# beyla-sidecar benchmark results", ""]
    lines.append(f"{meta['date']} · {meta['host']} · Linux {meta['kernel']} · {meta['cpus']} CPUs · "
                 f"git {meta['git']} · {'QUICK (harness check only)' if meta['quick'] else 'full run'} · "
                 f"{meta['runs']} alternating runs per figure · {meta['elapsed_s']:.0f} s in all")
    lines.append("")
    lines.append(f"Load average before/after: {meta['load_before']} / {meta['load_after']}. "
                 "Each figure: median of the runs, with min and max; ratios are with/without, "
                 "measured pairwise in the same alternating run.")
    lines.append("")
    lines += ["## Goals", "", f"| Goal | Figure | Median (min–max) | At {COMMIT} | |", "|---|---|---|---|---|"]
    for sec in sections:
        for f in sec.figures:
            d = f.to_dict()
            if "goal" in d:
                lines.append(f"| {d['goal']} | {f.label} | {fmt(d['median'], f.digits)} "
                             f"({fmt(d['min'], f.digits)}–{fmt(d['max'], f.digits)}) {f.unit} | {f.old} | "
                             f"{d['verdict']} |")
    lines.append("")
    for sec in sections:
        lines += [f"## {sec.title}", "", sec.method, ""]
        if sec.error:
            lines += [f"**Failed:** `{sec.error}`", ""]
        if sec.figures:
            lines += [f"| Figure | Median | Min | Max | Unit | At {COMMIT} | Goal | |",
                      "|---|---:|---:|---:|---|---:|---|---|"]
            for f in sec.figures:
                d = f.to_dict()
                lines.append(f"| {f.label} | {fmt(d['median'], f.digits)} | {fmt(d['min'], f.digits)} | "
                             f"{fmt(d['max'], f.digits)} | {f.unit} | {f.old} | {d.get('goal', '')} | "
                             f"{d.get('verdict', '')} |")
            lines.append("")
        for note in sec.notes:
            lines.append(f"- {note}")
        if sec.notes:
            lines.append("")
    return "\n".join(lines)


def as_json(sections: list[Section], meta: dict) -> dict:
    return {"meta": meta, "sections": [s.to_dict() for s in sections]}


__all__ = ["Figure", "Goal", "Section", "as_json", "asdict", "at_least", "at_most", "fmt", "markdown"]
