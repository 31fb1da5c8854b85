"""The API reference at ``/docs`` as one self-contained HTML page, rendered from the OpenAPI schema.

FastAPI's Swagger UI loads its scripts from a CDN, so on a machine without internet it is a blank page.
This page needs nothing from outside: every endpoint with its parameters, request bodies (fields, types,
descriptions, an example) and responses. Swagger UI stays available at ``/docs/swagger``.
"""
from __future__ import annotations

import html
import json
from typing import Any

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .op{border:1px solid #ddd;border-radius:6px;margin:1.2em 0;padding:.6em 1em}
.m{display:inline-block;min-width:4.5em;font-weight:700;font-family:monospace}
.get{color:#1a6} .post{color:#15c} .path{font-family:monospace;font-size:1.05em}
table{border-collapse:collapse;width:100%;margin:.4em 0} td,th{border-top:1px solid #eee;padding:.25em .5em;
text-align:left;vertical-align:top} th{font-weight:600;color:#555} code,pre{font-family:monospace}
pre{background:#f6f6f6;padding:.5em;overflow:auto} .muted{color:#777}
"""


def render(schema: dict[str, Any], *, swagger_url: str = "/docs/swagger", openapi_url: str = "/openapi.json") -> str:
    """The whole page for an OpenAPI 3 schema."""
    info = schema.get("info", {})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(info.get('title', 'API'))} API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(info.get('title', 'API'))} API <span class='muted'>{_e(info.get('version', ''))}</span></h1>",
        f"<p>{_e(info.get('summary') or info.get('description') or '')}</p>",
        f"<p class='muted'>Machine-readable: <a href='{_e(openapi_url)}'>{_e(openapi_url)}</a>. "
        f"Interactive (loads Swagger UI from the internet): <a href='{_e(swagger_url)}'>{_e(swagger_url)}</a>.</p>",
    ]
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method.lower() in ("get", "post", "put", "patch", "delete", "head"):
                parts.append(_operation(schema, method.lower(), path, op))
    parts.append("</body></html>")
    return "".join(parts)


def _operation(schema: dict, method: str, path: str, op: dict) -> str:
    out = [f"<div class='op'><div><span class='m {method}'>{method.upper()}</span>"
           f"<span class='path'>{_e(path)}</span></div>"]
    if op.get("summary"):
        out.append(f"<p>{_e(op['summary'])}</p>")
    if op.get("description"):
        out.append(f"<p class='muted'>{_e(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        rows = [(p.get("name", ""), p.get("in", ""), _type(schema, p.get("schema", {})),
                 "yes" if p.get("required") else "", p.get("description") or p.get("schema", {}).get("description", ""))
                for p in params]
        out.append(_table(("parameter", "in", "type", "required", "description"), rows))
    body = op.get("requestBody", {}).get("content", {})
    for ctype, media in body.items():
        s = _resolve(schema, media.get("schema", {}))
        out.append(f"<p><b>Request body</b> <code>{_e(ctype)}</code></p>")
        props = s.get("properties", {})
        if props:
            required = set(s.get("required", []))
            rows = [(name, _type(schema, p), "yes" if name in required else "", _describe(p))
                    for name, p in props.items()]
            out.append(_table(("field", "type", "required", "description"), rows))
        example = s.get("example", media.get("example"))
        if example is not None:
            out.append(f"<pre>{_e(json.dumps(example, indent=2))}</pre>")
    responses = op.get("responses", {})
    if responses:
        rows = [(code, r.get("description", ""), ", ".join(r.get("content", {}))) for code, r in responses.items()]
        out.append(_table(("status", "meaning", "content"), rows))
    out.append("</div>")
    return "".join(out)


def _resolve(schema: dict, s: dict) -> dict:
    ref = s.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        return schema.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[1], {})
    return s


def _type(schema: dict, s: dict) -> str:
    s = _resolve(schema, s)
    if "anyOf" in s or "oneOf" in s:
        return " | ".join(_type(schema, x) for x in s.get("anyOf", s.get("oneOf", [])))
    t = s.get("type", "object" if "properties" in s else "any")
    if t == "array" and "items" in s:
        return f"array of {_type(schema, s['items'])}"
    if s.get("format") == "binary":
        return "file"
    return str(t)


def _describe(p: dict) -> str:
    bits = [p.get("description", "")]
    limits = [f"{k} {p[k]:g}" for k in ("minimum", "maximum") if isinstance(p.get(k), (int, float))]
    if limits:
        bits.append("(" + ", ".join(limits) + ")")
    if "default" in p:
        bits.append(f"default {json.dumps(p['default'])}")
    if "properties" in p:
        bits.append("fields: " + ", ".join(p["properties"]))
    return " ".join(b for b in bits if b)


def _table(head: tuple[str, ...], rows: list[tuple]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)
