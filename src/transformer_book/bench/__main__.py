"""Command line: ``python -m transformer_book.bench flash [--quick] [--out PATH] [--sections ...]``.

Exit status: 0 when the run finished and the record was written; 2 when it could not run
(no CUDA GPU, triton missing, bad arguments, a refused --merge), in which case nothing is written.

A full run takes longer than some machines allow one command; record it in parts::

    python -m transformer_book.bench flash --sections correctness,forward
    python -m transformer_book.bench flash --sections forward_backward,ladder,memory --merge
"""

from __future__ import annotations

import argparse
import sys

from .flash import SECTIONS, NoGPUError, default_settings, run_flash_benchmark

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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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
