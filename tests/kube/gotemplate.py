"""A small, strict renderer for the subset of Go templates (and Helm functions) the chart uses.

There is no Helm binary here. This renders charts/beyla-sidecar the way `helm template` would for
the constructs below, and fails loudly on anything else, so the chart cannot silently drift out of
the subset that was checked:

    {{ pipeline }}  {{- trim -}}  {{/* comment */}}
    {{ define "n" }} {{ include "n" . }}  {{ if }} {{ else if }} {{ else }} {{ end }}  {{ range }}
    fields .A.b, $, ., string / number / bool literals, ( sub-pipelines ), `x | f a`
    functions: include quote default printf trunc trimSuffix trimPrefix eq ne not and or join
               toYaml nindent indent replace

Unlike Helm, reading a missing value (e.g. a typo in `.Values.x`) is an error unless it is tested
with `if`/`default`/`not` first: typos in the chart fail the test instead of rendering empty.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml


class TemplateError(Exception):
    pass


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(r"""\s*(?:
    (?P<lp>\() | (?P<rp>\)) | (?P<pipe>\|) |
    (?P<str>"(?:[^"\\]|\\.)*") | (?P<raw>`[^`]*`) |
    (?P<num>-?\d+(?:\.\d+)?) |
    (?P<field>(?:\$[A-Za-z0-9_]*)?(?:\.[A-Za-z0-9_]+)+|\.|\$) |
    (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
)""", re.VERBOSE)


def truthy(v: Any) -> bool:
    if v is MISSING or v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict, tuple)):
        return len(v) > 0
    return True


def _to_text(v: Any) -> str:
    if v is MISSING:
        raise TemplateError("rendering a missing value")
    if v is None:
        return ""  # Helm turns <no value> into an empty string
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (dict, list)):
        raise TemplateError(f"rendering a map or list directly: {v!r} (use toYaml)")
    return str(v)


def _to_yaml(v: Any) -> str:
    if v is MISSING:
        raise TemplateError("toYaml of a missing value")
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n").removesuffix("\n...")


def _go_printf(fmt: str, *args: Any) -> str:
    out, it = [], iter(args)

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        return _to_text(next(it))

    out.append(re.sub(r"%%|%[sdv]", sub, fmt))
    return "".join(out)


def _indent(n: int, s: str) -> str:
    return "\n".join((" " * n + line) if line else line for line in str(s).split("\n"))


class Renderer:
    def __init__(self, chart_dir: str | Path, values: dict[str, Any], release_name: str = "beyla-sidecar",
                 namespace: str = "beyla-sidecar"):
        self.chart_dir = Path(chart_dir)
        chart = yaml.safe_load((self.chart_dir / "Chart.yaml").read_text())
        self.root = {
            "Values": values,
            "Release": {"Name": release_name, "Namespace": namespace, "Service": "Helm",
                        "IsInstall": True, "IsUpgrade": False},
            "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
            "Capabilities": {"KubeVersion": {"Version": "v1.33.0"}},
        }
        self.defines: dict[str, list[Any]] = {}
        self.funcs = {
            "include": self._include, "quote": lambda v: json.dumps(_to_text(v) if v is not None else ""),
            "default": lambda d, v=MISSING: v if truthy(v) else d,
            "printf": _go_printf, "trunc": lambda n, s: _to_text(s)[:n],
            "trimSuffix": lambda suf, s: _to_text(s).removesuffix(suf),
            "trimPrefix": lambda pre, s: _to_text(s).removeprefix(pre),
            "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda v: not truthy(v),
            "and": lambda *a: next((x for x in a if not truthy(x)), a[-1]),
            "or": lambda *a: next((x for x in a if truthy(x)), a[-1]),
            "join": lambda sep, xs: sep.join(_to_text(x) for x in xs),
            "toYaml": _to_yaml, "nindent": lambda n, s: "\n" + _indent(n, s), "indent": _indent,
            "replace": lambda old, new, s: _to_text(s).replace(old, new),
        }
        for tpl in sorted(self.chart_dir.glob("templates/_*.tpl")):
            self._parse(tpl.read_text(), tpl.name)  # registers the defines

    # --- parsing ---------------------------------------------------------------------------
    def _parse(self, text: str, name: str) -> list[Any]:
        pieces: list[tuple[str, str]] = []
        pos = 0
        for m in _ACTION.finditer(text):
            before = text[pos:m.start()]
            if m.group(1):
                before = before.rstrip(" \t\r\n")
            pieces.append(("text", before))
            pieces.append(("action", m.group(2).strip()))
            pos = m.end()
            if m.group(3):
                rest = text[pos:]
                pos += len(rest) - len(rest.lstrip(" \t\r\n"))
        pieces.append(("text", text[pos:]))
        nodes, i, stop = self._block(pieces, 0, name)
        if stop is not None:
            raise TemplateError(f"{name}: unexpected {{{{ {stop} }}}}")
        return nodes

    def _block(self, pieces, i, name):
        nodes: list[Any] = []
        while i < len(pieces):
            kind, val = pieces[i]
            i += 1
            if kind == "text":
                if val:
                    nodes.append(("text", val))
                continue
            if val.startswith("/*"):
                if not val.endswith("*/"):
                    raise TemplateError(f"{name}: bad comment")
                continue
            word = val.split(None, 1)[0] if val else ""
            if val == "end" or val == "else" or val.startswith("else if "):
                return nodes, i, val
            if word == "define":
                dname = json.loads(val.split(None, 1)[1])
                body, i, stop = self._block(pieces, i, name)
                if stop != "end":
                    raise TemplateError(f"{name}: define {dname} not closed")
                self.defines[dname] = body
            elif word == "if":
                branches = []
                cond = self._expr(val[2:])
                while True:
                    body, i, stop = self._block(pieces, i, name)
                    branches.append((cond, body))
                    if stop == "end":
                        nodes.append(("if", branches, []))
                        break
                    if stop == "else":
                        else_body, i, stop = self._block(pieces, i, name)
                        if stop != "end":
                            raise TemplateError(f"{name}: else not closed")
                        nodes.append(("if", branches, else_body))
                        break
                    if stop and stop.startswith("else if "):
                        cond = self._expr(stop[len("else if "):])
                        continue
                    raise TemplateError(f"{name}: if not closed")
            elif word == "range":
                body, i, stop = self._block(pieces, i, name)
                if stop != "end":
                    raise TemplateError(f"{name}: range not closed")
                nodes.append(("range", self._expr(val[5:]), body))
            elif word in ("with", "template", "block", "tpl") or ":=" in val:
                raise TemplateError(f"{name}: `{val}` is outside the supported subset")
            else:
                nodes.append(("out", self._expr(val)))
        return nodes, i, None

    def _expr(self, src: str) -> Any:
        tokens: list[tuple[str, str]] = []
        pos = 0
        src = src.strip()
        while pos < len(src):
            m = _TOKEN.match(src, pos)
            if not m or m.end() == pos:
                raise TemplateError(f"cannot parse {src[pos:]!r}")
            tokens.append((m.lastgroup, m.group(m.lastgroup)))
            pos = m.end()
            while pos < len(src) and src[pos].isspace():
                pos += 1
        expr, rest = self._pipeline(tokens)
        if rest:
            raise TemplateError(f"trailing tokens in {src!r}")
        return expr

    def _pipeline(self, tokens):
        cmds = []
        cmd: list[Any] = []
        while tokens:
            kind, val = tokens[0]
            if kind == "rp":
                break
            tokens = tokens[1:]
            if kind == "pipe":
                cmds.append(cmd)
                cmd = []
            elif kind == "lp":
                sub, tokens = self._pipeline(tokens)
                if not tokens or tokens[0][0] != "rp":
                    raise TemplateError("unbalanced (")
                tokens = tokens[1:]
                cmd.append(("pipe", sub))
            else:
                cmd.append((kind, val))
        cmds.append(cmd)
        if any(not c for c in cmds):
            raise TemplateError("empty command in pipeline")
        return ("pipeline", cmds), tokens

    # --- evaluation ------------------------------------------------------------------------
    def _operand(self, op, dot):
        kind, val = op
        if kind == "pipe":
            return self._eval(val, dot)
        if kind == "str":
            return json.loads(val)
        if kind == "raw":
            return val[1:-1]
        if kind == "num":
            return float(val) if "." in val else int(val)
        if kind == "ident":
            if val in ("true", "false"):
                return val == "true"
            if val == "nil":
                return None
            raise TemplateError(f"function {val} used as a value")
        if kind == "field":
            if val == ".":
                return dot
            if val == "$":
                return self.root
            if val.startswith("$."):
                base, path = self.root, val[2:].split(".")
            elif val.startswith("$"):
                raise TemplateError(f"variables are outside the subset: {val}")
            else:
                base, path = dot, val[1:].split(".")
            cur = base
            for part in path:
                if not part:
                    continue
                if not isinstance(cur, dict):
                    raise TemplateError(f"cannot read .{part} of {cur!r} in {val}")
                cur = cur.get(part, MISSING)
            return cur
        raise TemplateError(f"bad operand {op}")

    def _eval(self, expr, dot):
        _, cmds = expr
        value: Any = MISSING
        for n, cmd in enumerate(cmds):
            piped = n > 0
            head_kind, head = cmd[0]
            if head_kind == "ident" and head not in ("true", "false", "nil"):
                fn = self.funcs.get(head)
                if fn is None:
                    raise TemplateError(f"function {head} is outside the supported subset")
                args = [self._operand(a, dot) for a in cmd[1:]]
                if piped:
                    args.append(value)
                if head == "include":
                    args = [args[0], args[1]]
                value = fn(*args)
            else:
                if piped or len(cmd) != 1:
                    raise TemplateError(f"cannot pipe into or call a non-function: {cmd}")
                value = self._operand(cmd[0], dot)
        return value

    def _include(self, name: str, dot: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f"include of undefined template {name}")
        return self._run(self.defines[name], dot)

    def _run(self, nodes, dot) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "out":
                out.append(_to_text(self._eval(node[1], dot)))
            elif node[0] == "if":
                for cond, body in node[1]:
                    if truthy(self._eval(cond, dot)):
                        out.append(self._run(body, dot))
                        break
                else:
                    out.append(self._run(node[2], dot))
            elif node[0] == "range":
                seq = self._eval(node[1], dot)
                if seq is MISSING or seq is None:
                    continue
                items = seq.values() if isinstance(seq, dict) else seq
                for item in items:
                    out.append(self._run(node[2], item))
        return "".join(out)

    def render(self, template: str) -> str:
        path = self.chart_dir / "templates" / template
        return self._run(self._parse(path.read_text(), template), self.root)

    def render_all(self) -> dict[str, str]:
        return {p.name: self.render(p.name) for p in sorted((self.chart_dir / "templates").iterdir())
                if not p.name.startswith("_")}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`helm -f`: maps merge recursively, everything else replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
