"""Load every page of the built website in headless Chromium, as a reader would, offline.

    python tools/browser_check.py [_build/html] [--screenshots DIR] [--only PATTERN]

The site is served on 127.0.0.1. A page fails the check on: a JavaScript error, a console
error, a failed request or HTTP error, any request to a host other than localhost (it is
blocked and reported), math that MathJax did not typeset, an embedded widget view or a
bertviz view that did not draw. A full-page screenshot of every page is saved so a person
can look at what readers see.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

# What "drew" means for the dynamic content a page may hold (checked only where present).
DYNAMIC_CHECKS = [
    # (what, selector that shows the page has it, JS returning True once it has rendered)
    ("math", "div.math, span.math",
     "() => document.querySelectorAll('mjx-container').length > 0"),
    ("ipywidgets", "script[type='application/vnd.jupyter.widget-view+json']",
     "() => document.querySelectorAll('.widget-area, .jupyter-widgets, .lm-Widget').length > 0"),
    ("bertviz", "[id^='bertviz']",
     "() => Array.from(document.querySelectorAll('[id^=\"bertviz\"] svg'))"
     ".some(s => s.querySelectorAll('*').length > 10)"),
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test log readable
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def check_page(page, url: str, shot: Path | None) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"JavaScript error: {err}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("requestfailed", lambda req: problems.append(
        f"request failed: {req.url} ({req.failure})")
        if urlparse(req.url).hostname in LOCAL_HOSTS else None)
    page.on("response", lambda res: problems.append(f"HTTP {res.status}: {res.url}")
            if res.status >= 400 else None)
    page.goto(url, wait_until="networkidle", timeout=60_000)
    for what, selector, drawn in DYNAMIC_CHECKS:
        if page.query_selector(selector) is None:
            continue
        try:
            page.wait_for_function(drawn, timeout=20_000)
        except Exception:
            problems.append(f"{what} present but not rendered")
    if shot is not None:
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    return problems


def write_junit(path: Path, results: list[tuple[str, list[str]]]) -> None:
    import xml.etree.ElementTree as ET

    suite = ET.Element("testsuite", name="browser-check", tests=str(len(results)),
                       failures=str(sum(bool(p) for _, p in results)), errors="0", skipped="0")
    for page, problems in results:
        case = ET.SubElement(suite, "testcase", classname="browser_check", name=page)
        if problems:
            ET.SubElement(case, "failure", message=problems[0]).text = "\n".join(problems)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site", nargs="?", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--only", default="", help="check only pages whose path contains this")
    parser.add_argument("--junit", type=Path, help="also write the results as a JUnit XML report")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    pages = sorted(p for p in site.rglob("*.html")
                   if "_static" not in p.parts and "_sources" not in p.parts and args.only in p.as_posix())
    if not pages:
        print(f"browser check: no pages under {site}; build the site first", file=sys.stderr)
        return 1
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    server, base = serve(site)
    failures = 0
    blocked: list[str] = []
    results: list[tuple[str, list[str]]] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")

            def only_local(route):
                if urlparse(route.request.url).hostname in LOCAL_HOSTS or route.request.url.startswith(("data:", "blob:")):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort("blockedbyclient")

            context.route("**/*", only_local)
            for path in pages:
                rel = path.relative_to(site).as_posix()
                page = context.new_page()
                before = len(blocked)
                shot = args.screenshots / rel.replace("/", "__").replace(".html", ".png")
                problems = check_page(page, f"{base}/{rel}", shot)
                problems += [f"request to another host: {u}" for u in blocked[before:]]
                page.close()
                status = "ok" if not problems else "FAIL"
                print(f"[{status}] {rel}")
                for p in problems:
                    print(f"    {p}")
                failures += bool(problems)
                results.append((rel, problems))
            browser.close()
    finally:
        server.shutdown()
    if args.junit:
        write_junit(args.junit, results)
    print(f"browser check: {len(pages) - failures} passed, {failures} failed "
          f"(screenshots in {args.screenshots.relative_to(ROOT) if args.screenshots.is_relative_to(ROOT) else args.screenshots})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
