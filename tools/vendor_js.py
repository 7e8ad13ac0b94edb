"""Put the JavaScript the website needs into book/_static/vendor/, so no page loads a CDN.

Which packages and files: book/vendor.json. Each package is fetched once with `npm pack`
(the npm registry is reached at set-up time only, like PyPI), verified against the SHA-256
recorded in vendor.json, cached under ~/.cache/transformer-book/npm/, and unpacked.
Run with --record to fill in missing hashes after changing a version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "book" / "vendor.json"
DEST = ROOT / "book" / "_static" / "vendor"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transformer-book" / "npm"


def _tarball(name: str, version: str) -> Path:
    filename = f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    path = CACHE / filename
    if not path.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("vendor_js: `npm` is needed once to fetch the website's JavaScript "
                             f"({name}@{version}); install Node.js/npm (Debian: apt-get install npm)")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([npm, "pack", f"{name}@{version}", "--silent", "--pack-destination", tmp],
                           check=True, stdout=subprocess.DEVNULL)
            (fetched,) = Path(tmp).glob("*.tgz")
            shutil.move(str(fetched), path)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unpack(tarball: Path, files: dict[str, str], exclude: list[str], dest: Path) -> int:
    copied = 0
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            inner = member.name.split("/", 1)[1]  # strip the leading "package/"
            for source, target in files.items():
                if source.endswith("/") and inner.startswith(source):
                    out = dest / target / inner[len(source):]
                elif inner == source:
                    out = dest / target
                else:
                    continue
                if any(inner.endswith(x) for x in exclude):
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
                copied += 1
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", action="store_true", help="write missing hashes into vendor.json")
    args = parser.parse_args(argv)
    manifest = json.loads(MANIFEST.read_text())
    stamp = DEST / ".manifest.json"
    if stamp.exists() and json.loads(stamp.read_text()) == manifest and not args.record:
        return 0  # already unpacked from exactly this manifest
    shutil.rmtree(DEST, ignore_errors=True)
    for pkg in manifest["packages"]:
        tarball = _tarball(pkg["name"], pkg["version"])
        digest = _sha256(tarball)
        if not pkg.get("sha256"):
            if not args.record:
                raise SystemExit(f"vendor_js: no sha256 recorded for {pkg['name']}; run with --record")
            pkg["sha256"] = digest
        elif digest != pkg["sha256"]:
            tarball.unlink()
            raise SystemExit(f"vendor_js: {pkg['name']}@{pkg['version']} has sha256 {digest}, "
                             f"expected {pkg['sha256']} (cached copy removed; try again)")
        n = _unpack(tarball, pkg["files"], pkg.get("exclude", []), DEST)
        if n == 0:
            raise SystemExit(f"vendor_js: nothing matched {pkg['files']} in {pkg['name']}")
    if args.record:
        MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    stamp.write_text(json.dumps(manifest))
    print(f"vendor_js: {len(manifest['packages'])} packages in {DEST.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
