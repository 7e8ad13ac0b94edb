"""Command line: ``python -m transformer_book.bench flash [--quick] [--out PATH] [--sections ...]``.

Other benchmarks (``decode``: chapter 8, ``speculative``: chapter 10) live in their own modules
of this package, each with ``add_parser(subparsers)`` and ``run(args) -> exit status``; they are
listed in :data:`EXTRA_BENCHMARKS`.

Exit status: 0 when the run finished and the record was written; 2 when it could not run
(no CUDA GPU, triton missing, bad arguments, a refused --merge), in which case nothing is written.

A full run takes longer than some machines allow one command; record it in parts::

    python -m transformer_book.bench flash --sections correctness,forward
    python -m transformer_book.bench flash --sections forward_backward,ladder,memory --merge
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .flash import SECTIONS, NoGPUError, default_settings, run_flash_benchmark

#: name -> module of this package with ``add_parser(subparsers)`` and ``run(args)``.
EXTRA_BENCHMARKS = {"decode": "decode", "speculative": "speculative"}

DEFAULT_OUT = {False: "book/data/flash_bench.json", True: "book/data/flash_bench_quick.json"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m transformer_book.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    flash = sub.add_parser("flash", help="chapter 9: FlashAttention vs naive attention and PyTorch SDPA")
    flash.add_argument("--quick", action="store_true", help="a smaller grid that runs in a few minutes")
    flash.add_argument("--out", default=None,
                       help=f"where to write the JSON (default {DEFAULT_OUT[False]}, with --quick {DEFAULT_OUT[True]})")
    flash.add_argument("--sections", default=",".join(SECTIONS),
                       help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    flash.add_argument("--merge", action="store_true",
                       help="keep the sections already in --out (same GPU, same grid) and add/replace these: "
                            "record a long benchmark in several shorter runs")
    for module in _extra_modules().values():
        module.add_parser(sub)
    return parser


def _extra_modules() -> dict:
    found = {}
    for name, module in EXTRA_BENCHMARKS.items():
        try:
            found[name] = importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as err:  # a benchmark not written yet
            if err.name != f"{__package__}.{module}":
                raise
    return found


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    extra = _extra_modules()
    if args.benchmark in extra:
        return extra[args.benchmark].run(args)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    try:
        settings = default_settings(quick=args.quick, sections=sections)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or DEFAULT_OUT[args.quick]
    try:
        record = run_flash_benchmark(settings, out=out, progress=lambda msg: print(msg, flush=True), merge=args.merge)
    except NoGPUError as err:
        print(f"transformer_book.bench flash: {err}. This benchmark needs a CUDA GPU; "
              f"no file was written ({out} is untouched).", file=sys.stderr)
        return 2
    except ValueError as err:  # --merge refused
        print(f"transformer_book.bench flash: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"transformer_book.bench flash: {err}. Install triton (pip install triton); nothing was written.",
              file=sys.stderr)
        return 2
    missing = [s for s in SECTIONS if s not in record["results"]]
    print(f"wrote {out}" + (f" (sections still missing: {', '.join(missing)})" if missing else " (complete)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
