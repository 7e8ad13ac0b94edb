"""Load every page of the built website in headless Chromium, as a reader would, offline.

    python tools/browser_check.py [_build/html] [--screenshots DIR] [--only PATTERN]

The site is served on 127.0.0.1. A page fails the check on: a JavaScript error, a console
error, a failed request or HTTP error, any request to a host other than localhost (it is
blocked and reported), math that MathJax did not typeset, an embedded widget view or a
bertviz view that did not draw; a sidebar or contents toggle that does not open what it
should, at 1400 px and at 420 px; a control of a precomputed view (``data-tb-control``) that
does not change the view shown when moved; an ipywidgets control (it needs a kernel the
website does not have); text saying part of the book is missing ("not installed",
"skipped", ...); a section with no prose and no output; a figure without a numbered caption
or without alt text that describes it. Full-page screenshots of every page
at both widths are saved so a person can look at what readers see.
"""

from __future__ import annotations

import argparse
import re
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
# A desktop and a phone: every page is looked at (and its navigation clicked) at both widths.
WIDTHS = (1400, 420)

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


def chromium_path() -> str:
    """Debian's Chromium (Playwright's own browser download does not work offline)."""
    return shutil.which("chromium") or "/usr/bin/chromium"


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# What the code printed must never say that part of the book was left out of this build.
MISSING_PHRASES = re.compile(
    r"\b(?:not installed|(?:is|are|was|were|been|be) skipped|skipping (?:this|the|it)"
    r"|cannot be reached|could not be (?:run|loaded|found)|no output)\b", re.IGNORECASE)

# Paths of the machine that built the site mean nothing to a reader (and leak its layout).
BUILD_PATHS = re.compile(r"(?:/root/|/home/[\w.-]+/|/Users/[\w.-]+/|/work/main/|[A-Z]:\\Users\\)\S*")

# Sections with nothing for the reader: no prose, no output, no figure (only a heading, or
# only code cells that printed nothing).
EMPTY_SECTIONS_JS = """() => Array.from(document.querySelectorAll('main section'))
    .filter(s => Array.from(s.children).some(c => /^H[1-6]$/.test(c.tagName))).filter(s => {
  const own = Array.from(s.children).filter(c => c.tagName !== 'SECTION'
      && !/^H[1-6]$/.test(c.tagName) && !c.classList.contains('headerlink'));
  const text = own.map(c => {
      const copy = c.cloneNode(true);
      copy.querySelectorAll('.cell_input, .highlight, script, style').forEach(x => x.remove());
      return copy.textContent.trim() + (copy.querySelector('img, svg, table, mjx-container, '
          + 'iframe, [data-tb-interactive]') ? 'x' : '');
  }).join('');
  return text.length === 0 && !s.querySelector(':scope > section');
}).map(s => Array.from(s.children).find(c => /^H[1-6]$/.test(c.tagName)).textContent.trim()
    .replace(/#$/, ''))"""

# Controls of an ipywidget need a running kernel: on the website they look live and do nothing.
DEAD_WIDGET_CONTROLS = (".widget-text input, .widget-textarea textarea, .widget-slider, "
                        ".widget-dropdown select, .widget-button, button.jupyter-button, "
                        ".widget-inline-hbox input")


# Every figure a cell draws: a numbered caption and alt text that describes it (myst-nb cell
# metadata {"mystnb": {"figure": {"caption", "name"}, "image": {"alt"}}}); precomputed views
# carry their own alt text.
FIGURES_JS = """() => Array.from(document.querySelectorAll('main .cell_output img'))
  .filter(img => !img.closest('[data-tb-interactive]') && !img.closest('[id^="bertviz"]'))
  .map(img => {
    const fig = img.closest('figure'), alt = (img.getAttribute('alt') || '').trim();
    const caption = fig && fig.querySelector('figcaption');
    const number = caption && caption.querySelector('.caption-number');
    const problems = [];
    if (!number) problems.push('no numbered caption');
    if (alt.length < 15 || /^[0-9a-f]{16,}|\\.(png|svg|jpe?g)$/i.test(alt))
      problems.push(`alt text ${JSON.stringify(alt)} does not describe it`);
    const where = caption ? caption.textContent.trim().slice(0, 50)
      : (img.getAttribute('src') || '').split('/').pop().slice(0, 40);
    return problems.length ? `figure ${where}: ${problems.join(', ')}` : null;
  }).filter(x => x).concat(Array.from(document.querySelectorAll('main figure'))
  .filter(f => !f.querySelector('img, svg, table, iframe, pre, [data-tb-interactive]'))
  .map(f => `figure ${(f.querySelector('figcaption') || f).textContent.trim().slice(0, 50)}`
       + ': a caption with nothing to show'))"""


def _visible(page, selector: str) -> bool:
    return page.evaluate("""(sel) => Array.from(document.querySelectorAll(sel)).some(e => {
        const r = e.getBoundingClientRect(), st = getComputedStyle(e);
        return r.width > 0 && r.height > 0 && st.visibility !== 'hidden' && st.display !== 'none'
            && parseFloat(st.opacity || '1') > 0.05; })""", selector)


def _click_visible(page, selector: str) -> bool:
    buttons = [b for b in page.query_selector_all(selector) if b.is_visible()]
    if not buttons:
        return False
    buttons[0].click()
    page.wait_for_timeout(400)  # the themes animate the sidebar for 0.25 s
    return True


def check_navigation(page, width: int) -> list[str]:
    """Click the sidebar and contents toggles a reader sees at this width; they must work."""
    problems = []
    toggle = ".bd-header-article .primary-toggle"
    contents_toggle = ".bd-header-article .secondary-toggle"
    sidebar_links = "#pst-primary-sidebar .bd-links a, #pst-primary-sidebar-modal .bd-links a"
    if _visible(page, "#pst-header"):
        problems.append(f"{width} px: the theme's extra top bar (a second search box) is shown")
    has_contents = page.query_selector("#pst-secondary-sidebar .page-toc") is not None
    if width >= 992:  # the sidebar is open; the toggle folds it away and brings it back
        if not _visible(page, "#pst-primary-sidebar .bd-links"):
            problems.append(f"{width} px: the chapter list is not shown")
        if not _click_visible(page, toggle):
            problems.append(f"{width} px: no sidebar toggle")
        else:
            if _visible(page, "#pst-primary-sidebar .bd-links"):
                problems.append(f"{width} px: the sidebar toggle does not close the sidebar")
            _click_visible(page, toggle)
            if not _visible(page, "#pst-primary-sidebar .bd-links"):
                problems.append(f"{width} px: the sidebar toggle does not reopen the sidebar")
    else:  # the chapter list is hidden; the toggle opens it as a dialog
        if not _click_visible(page, toggle):
            problems.append(f"{width} px: no sidebar toggle: the chapter list cannot be opened")
        elif not _visible(page, sidebar_links):
            problems.append(f"{width} px: the sidebar toggle does not open the chapter list")
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)
    if has_contents:
        if _visible(page, "#pst-secondary-sidebar .page-toc"):
            pass  # wide screens show the page's contents all the time
        elif not _click_visible(page, contents_toggle):
            problems.append(f"{width} px: no contents toggle: the page's contents cannot be opened")
        elif not _visible(page, "#pst-secondary-sidebar-modal .page-toc"):
            problems.append(f"{width} px: the contents toggle does not open the page's contents")
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)
    return problems


VIEW_STATE_JS = """(box) => { const v = Array.from(box.querySelectorAll('[data-tb-view]'))
    .filter(v => !v.hidden); return v.length === 1 ? v[0].dataset.tbView + '\\n' + v[0].innerHTML
    : 'shown: ' + v.length; }"""


def check_interactive_views(page) -> tuple[list[str], int]:
    """Move every control of every precomputed view; the view shown must change each time."""
    problems, moved = [], 0
    boxes = page.query_selector_all("[data-tb-interactive]")
    for b, box in enumerate(boxes, start=1):
        views = box.query_selector_all("[data-tb-view]")
        controls = box.query_selector_all("[data-tb-control]")
        if len(views) < 2 or not controls:
            problems.append(f"interactive view {b}: {len(views)} views, {len(controls)} controls")
            continue
        for control in controls:
            name = control.get_attribute("data-tb-control")
            before = box.evaluate(VIEW_STATE_JS)
            if before.startswith("shown:"):
                problems.append(f"interactive view {b}: {before} views at once")
                break
            kind = control.evaluate("c => c.tagName === 'SELECT' ? 'select' : c.type")
            if kind == "select":
                options = control.evaluate("c => Array.from(c.options).map(o => o.value)")
                current = control.evaluate("c => c.value")
                other = next((o for o in reversed(options) if o != current), None)
                if other is None:
                    problems.append(f"interactive view {b}: control {name!r} has one value")
                    continue
                control.select_option(other)
            else:
                lo, hi, value = control.evaluate("c => [Number(c.min), Number(c.max), Number(c.value)]")
                target = lo if value != lo else hi
                control.evaluate("(c, v) => { c.value = String(v); "
                                 "c.dispatchEvent(new Event('input', {bubbles: true})); }", target)
            after = box.evaluate(VIEW_STATE_JS)
            moved += 1
            if after == before or after.startswith("shown:"):
                problems.append(f"interactive view {b}: moving {name!r} does not change the view "
                                f"({after.splitlines()[0]})")
    return problems, moved


def check_page(page, url: str, shots: dict[int, Path] | None) -> tuple[list[str], int]:
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"JavaScript error: {err}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("requestfailed", lambda req: problems.append(
        f"request failed: {req.url} ({req.failure})")
        if urlparse(req.url).hostname in LOCAL_HOSTS else None)
    page.on("response", lambda res: problems.append(f"HTTP {res.status}: {res.url}")
            if res.status >= 400 else None)
    page.set_viewport_size({"width": WIDTHS[0], "height": 900})
    page.goto(url, wait_until="networkidle", timeout=60_000)
    for what, selector, drawn in DYNAMIC_CHECKS:
        if page.query_selector(selector) is None:
            continue
        try:
            page.wait_for_function(drawn, timeout=20_000)
        except Exception:
            problems.append(f"{what} present but not rendered")
    text = "\n".join(o.inner_text() for o in page.query_selector_all("main .cell_output"))
    for match in MISSING_PHRASES.finditer(text):
        context = text[max(0, match.start() - 60): match.end() + 40].replace("\n", " ")
        problems.append(f"an output says part of the page is missing: ...{context}...")
    for match in BUILD_PATHS.finditer(text):
        problems.append(f"an output shows a path of the build machine: {match.group(0)[:80]}")
    for title in page.evaluate(EMPTY_SECTIONS_JS):
        problems.append(f"empty section (no prose, no output): {title!r}")
    problems += page.evaluate(FIGURES_JS)
    dead = page.query_selector_all(DEAD_WIDGET_CONTROLS)
    if dead:
        problems.append(f"{len(dead)} widget control(s) that need a running kernel "
                        "(use transformer_book.viz's precomputed views on the website)")
    view_problems, moved = check_interactive_views(page)
    problems += view_problems
    page.reload(wait_until="networkidle")  # the screenshots show the views as a reader finds them
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(300)
        if shots is not None:
            shots[width].parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots[width]), full_page=True)
        problems += check_navigation(page, width)
        wide = page.evaluate("() => document.documentElement.scrollWidth")
        if wide > width + 2:
            problems.append(f"{width} px: the page is {wide} px wide: it scrolls sideways")
    return problems, moved


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
    chromium = chromium_path()
    server, base = serve(site)
    failures = moved = 0
    blocked: list[str] = []
    results: list[tuple[str, list[str]]] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            context = browser.new_context(viewport={"width": WIDTHS[0], "height": 900},
                                          service_workers="block")

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
                stem = rel.replace("/", "__").removesuffix(".html")
                shots = {w: args.screenshots / f"{stem}@{w}.png" for w in WIDTHS}
                problems, n_moved = check_page(page, f"{base}/{rel}", shots)
                moved += n_moved
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
    print(f"browser check: {len(pages) - failures} passed, {failures} failed; "
          f"{moved} controls of precomputed views moved "
          f"(screenshots in {args.screenshots.relative_to(ROOT) if args.screenshots.is_relative_to(ROOT) else args.screenshots})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
