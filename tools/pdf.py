"""Print the built website as one PDF of the whole book, offline.

    python tools/pdf.py [_build/html] [--out _build/pdf/book.pdf]

Every page of ``_toc.yml``, in its order, is loaded from a local server in headless Chromium
(Debian's ``chromium``, driven by Playwright), after MathJax has typeset the equations and the
bertviz views have drawn, and printed with the site's print styles (``book/_static/book.css``:
no navigation, code wrapped, each precomputed view at its default setting, exercise solutions
opened). The pages are joined with pypdf, with one bookmark per page. No request leaves the
machine: any request to another host is blocked, and named.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml
from playwright.sync_api import sync_playwright
from pypdf import PdfReader, PdfWriter

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("browser_check", ROOT / "tools" / "browser_check.py")
browser_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser_check)


def toc_pages(toc: Path) -> list[str]:
    """The documents of ``_toc.yml`` in reading order (no suffix)."""
    data = yaml.safe_load(toc.read_text(encoding="utf-8"))
    pages = [data["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    for part in data.get("parts", []):
        walk(part.get("chapters"))
    walk(data.get("chapters"))
    return [p.removesuffix(".md").removesuffix(".ipynb") for p in pages]


OPEN_SOLUTIONS_JS = """() => {
  document.querySelectorAll('details').forEach(d => d.open = true);
  document.querySelectorAll('.toggle-hidden, .toggle-details__summary ~ *')
      .forEach(e => e.classList.remove('toggle-hidden'));
}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site", nargs="?", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "pdf" / "book.pdf")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    pages = [p for p in toc_pages(ROOT / "_toc.yml") if (site / f"{p}.html").is_file()]
    if not pages:
        print(f"pdf: no pages under {site}; build the site first (bash tools/build.sh)",
              file=sys.stderr)
        return 1
    parts_dir = args.out.parent / "pages"
    parts_dir.mkdir(parents=True, exist_ok=True)
    server, base = browser_check.serve(site)
    blocked: list[str] = []
    printed: list[tuple[str, Path]] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_check.chromium_path(),
                                         headless=True, args=browser_check.CHROMIUM_FLAGS)
            context = browser.new_context(viewport={"width": 1000, "height": 1400},
                                          service_workers="block")

            def only_local(route):
                url = route.request.url
                if urlparse(url).hostname in browser_check.LOCAL_HOSTS or url.startswith(
                        ("data:", "blob:")):
                    route.continue_()
                else:
                    blocked.append(url)
                    route.abort("blockedbyclient")

            context.route("**/*", only_local)
            for n, doc in enumerate(pages):
                page = context.new_page()
                page.goto(f"{base}/{doc}.html", wait_until="networkidle", timeout=60_000)
                for _, selector, drawn in browser_check.DYNAMIC_CHECKS:
                    if page.query_selector(selector) is not None:
                        page.wait_for_function(drawn, timeout=30_000)
                page.evaluate(OPEN_SOLUTIONS_JS)
                page.emulate_media(media="print")
                title = page.title().split("—")[0].split(" | ")[0].strip() or doc
                out = parts_dir / f"{n:02d}.pdf"
                page.pdf(path=str(out), format="A4", print_background=True,
                         margin={"top": "16mm", "bottom": "16mm", "left": "14mm",
                                 "right": "14mm"})
                page.close()
                printed.append((title, out))
                print(f"[pdf] {doc}: {len(PdfReader(out).pages)} pages")
            browser.close()
    finally:
        server.shutdown()
    if blocked:
        print("pdf: requests to other hosts were blocked:\n  " + "\n  ".join(blocked),
              file=sys.stderr)
        return 1
    writer = PdfWriter()
    for title, path in printed:
        start = len(writer.pages)
        writer.append(str(path))
        writer.add_outline_item(title=title, page_number=start)
    writer.add_metadata({"/Title": "Transformers, Piece by Piece"})
    with open(args.out, "wb") as handle:
        writer.write(handle)
    print(f"[pdf] {args.out} ({len(writer.pages)} pages, "
          f"{args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
