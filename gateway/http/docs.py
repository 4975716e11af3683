"""The pages a person reads: `/`, which says what this service is and where to go, and `/docs`,
Swagger UI over /openapi.json.

Swagger UI's files come from the swagger-ui-py package and are served by the gateway itself under
/docs/static/: the page loads nothing from anywhere else, and its Content-Security-Policy lets it
talk to this origin alone, so a key pasted into "Authorize" can only be sent here.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aiohttp import web

import gateway
from gateway.http.problems import ProblemError

STATIC = "/docs/static/"

# Our own start-up script for Swagger UI. A file rather than an inline script, so the page's
# policy can refuse every inline script.
_START = """\
// Swagger UI over this gateway's own description. "Try it out" calls this same origin; the key
// given to "Authorize" is kept in this tab only (persistAuthorization is off).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "BaseLayout",
    deepLinking: true,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0,
    defaultModelExpandDepth: 5,
    persistAuthorization: false,
    validatorUrl: null
  });
});
"""

# Swagger UI's "Links" column is empty for every answer here: hidden.
_STYLE = """\
.swagger-ui .response-col_links { display: none; }
"""

# Swagger UI lays out with inline styles, hence 'unsafe-inline' for styles (never scripts).
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
LANDING_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    content_type: str
    # The file's name in swagger-ui-py's static folder, or our own text.
    source: str
    ours: bool = False


ASSETS = {
    "swagger-ui.css": Asset("text/css", "swagger-ui.css"),
    "swagger-ui-bundle.js": Asset("text/javascript", "swagger-ui-bundle.js"),
    "segue-docs.css": Asset("text/css", _STYLE, ours=True),
    "segue-docs.js": Asset("text/javascript", _START, ours=True),
    "favicon-32x32.png": Asset("image/png", "favicon-32x32.png"),
}
ASSET_TYPES = tuple(dict.fromkeys(a.content_type for a in ASSETS.values()))


def swagger_ui_folder() -> Path:
    """swagger-ui-py's static folder. Found without importing the package: its __init__ loads
    Jinja2, PyYAML and a handler per web framework, none of which serving its files needs."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed; install the gateway with pip")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@cache
def asset_bytes(name: str) -> tuple[bytes, bytes]:
    """The asset's bytes and their gzip, read and compressed once per process."""
    asset = ASSETS[name]
    raw = asset.source.encode() if asset.ours else (swagger_ui_folder() / asset.source).read_bytes()
    return raw, gzip.compress(raw, compresslevel=6, mtime=0)


def docs_html() -> str:
    title = html.escape(f"Segue API {gateway.__version__}")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{STATIC}favicon-32x32.png">
<link rel="stylesheet" href="{STATIC}swagger-ui.css">
<link rel="stylesheet" href="{STATIC}segue-docs.css">
</head>
<body>
<noscript><p>This page needs JavaScript. The API is described in
<a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p></noscript>
<div id="swagger-ui"></div>
<script src="{STATIC}swagger-ui-bundle.js"></script>
<script src="{STATIC}segue-docs.js"></script>
</body>
</html>
"""


# What the landing page links to, with what each is. /admin is the dashboard's own page.
LINKS = (
    ("/docs", "API documentation: every route, its fields and examples; try calls with a key"),
    ("/openapi.json", "The OpenAPI 3.1 description, for client generators and tests"),
    ("/healthz", "Liveness: the process answers"),
    ("/readyz", "Readiness: the database answers; degraded states say why"),
    ("/metrics", "Prometheus metrics"),
    ("/admin", "The admin dashboard (needs a key with the admin scope)"),
)


def landing_html() -> str:
    version = html.escape(gateway.__version__)
    items = "\n".join(
        f'<li><a href="{href}"><code>{href}</code></a> {html.escape(text)}</li>'
        for href, text in LINKS
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Segue {version}</title>
<link rel="icon" type="image/png" href="{STATIC}favicon-32x32.png">
<style>
body{{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:3rem auto;padding:0 1rem;
color:#1b1f24}}
h1{{margin-bottom:0}}.version{{color:#57606a;margin-top:.25rem}}
ul{{padding:0;list-style:none}}li{{margin:.6rem 0}}
a{{color:#0550ae;text-decoration:none;margin-right:.5rem}}a:hover{{text-decoration:underline}}
code{{font-size:15px}}
</style>
</head>
<body>
<h1>Segue</h1>
<p class="version">version <span id="version">{version}</span></p>
<p>An event-sourced recommendation gateway: client apps ask it what to play next and report
what happened. The <code>/v1</code> routes need an API key (<code>Authorization: Bearer</code>);
the pages below do not.</p>
<ul>
{items}
</ul>
</body>
</html>
"""


def _page(text: str, policy: str) -> web.Response:
    return web.Response(
        text=text,
        content_type="text/html",
        headers={
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


async def landing(request: web.Request) -> web.StreamResponse:
    return _page(landing_html(), LANDING_POLICY)


async def docs(request: web.Request) -> web.StreamResponse:
    return _page(docs_html(), DOCS_POLICY)


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (`gzip;q=0` refuses it)."""
    for part in header.lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip()
            try:
                return not q or float(q) > 0
            except ValueError:
                return False
    return False


async def docs_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["asset"]
    asset = ASSETS.get(name)
    if asset is None:
        raise ProblemError(404, "not-found", "Not Found", "no such asset", field="asset")
    # The first request reads and compresses the file (the bundle is 1.5 MB) off the loop.
    raw, packed = await asyncio.to_thread(asset_bytes, name)
    headers = {
        "Cache-Control": "public, max-age=3600",
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    body = raw
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        body = packed
        headers["Content-Encoding"] = "gzip"
    charset = "utf-8" if asset.content_type.startswith("text/") else None
    return web.Response(
        body=body, content_type=asset.content_type, charset=charset, headers=headers
    )
