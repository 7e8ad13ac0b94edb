r"""Benchmark chapter 8's decoding: the static KV cache against Hugging Face and the bandwidth bound.

::

    python -m transformer_book.bench decode --device cpu     # -> book/data/decode_bench_cpu.json
    python -m transformer_book.bench decode --device cuda    # -> book/data/decode_bench_cuda.json

The model is GPT-2 small's shape with random weights: a ``transformers.GPT2LMHeadModel`` built
from a ``GPT2Config`` (nothing is downloaded) and the same weights loaded into the book's
:class:`~transformer_book.models.GPT` with ``GPT.from_hf_gpt2``.

CPU (``--device cpu``, float32, ``--threads`` threads), every ratio measured side by side: the
contenders run in turns inside each repetition (the order rotates), and a ratio is the median
of the per-repetition ratios, so a neighbour's load slows both sides of a ratio alike.

* ``batch1``: greedy generation of ``new_tokens`` after a ``prompt_len``-token prompt, the
  book's :func:`~transformer_book.generate.generate` against ``GPT2LMHeadModel.generate``
  (identical tokens checked first), tokens per second of the whole call;
* ``bound``: the machine's memory read bandwidth (the sum of a large tensor) and the book's
  greedy decoding time per token (after the prompt; :meth:`GPT.decode_greedy`, 8 tokens a
  call, which the C loop chooses in one call, as in ``generate``) in the same repetitions,
  each call timed next to as many reads; the ceiling is
  ``bandwidth / bytes read per token`` (every weight once, plus the cache read), in float32
  and bfloat16;
* ``context``: the cost of one token at context ``context`` with the cache (one position
  through the model) and without (the whole context again);
* ``batch``: the same as ``batch1`` for ``batch`` prompts at once.

GPU (``--device cuda``, float16, batch 1): the static cache with one decoding step captured as
a CUDA graph (:class:`CUDAGraphDecoder`), the same without the graph, and Hugging Face's
``generate``, tokens per second; the greedy tokens against the CPU's float32 run on the same
(float16-rounded) weights. Without a CUDA GPU nothing is measured and no file is written.

The record (JSON, written atomically) holds the settings, the provenance
(:func:`~transformer_book.bench.provenance.collect_provenance`, plus the CPU model and the
load average before and after) and, for every target, the measured value next to the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from transformer_book import _checks, cpu_kernels
from transformer_book.generate import generate
from transformer_book.kv_cache import GraphKVCache, kv_cache_bytes
from transformer_book.models import GPT

from .provenance import collect_provenance

__all__ = [
    "SCHEMA", "DEFAULT_OUT", "TARGETS", "DecodeSettings", "NoGPUError", "gpt2_pair",
    "measure_bandwidth", "bytes_per_token", "bound_pairs", "measure_bound", "interleaved", "median_ratio", "CUDAGraphDecoder",
    "run_cpu_benchmark", "run_cuda_benchmark", "validate_record", "write_record", "load_record",
    "summary", "add_parser", "run",
]

SCHEMA = "transformer_book.bench.decode/1"
DEFAULT_OUT = {"cpu": "book/data/decode_bench_cpu.json", "cuda": "book/data/decode_bench_cuda.json"}

#: name -> (what is compared, the target, True when higher is better).
TARGETS = {
    "batch1_vs_hf": ("book generate / HF generate tokens/s, batch 1", 1.1),
    "bandwidth_fraction": ("book decode tokens/s / (bandwidth / bytes per token), float32, batch 1", 0.85),
    "cached_vs_uncached": ("uncached / cached cost of one token at the context length", 20.0),
    "batch_vs_hf": ("book generate / HF generate tokens/s at the batch size", 1.1),
    "gpu_tokens_per_s": ("static cache + CUDA graph tokens/s, float16, batch 1", 3000.0),
    "gpu_tokens_equal": ("leading greedy tokens equal to the CPU float32 run", 32),
}
_CPU_TARGETS = ("batch1_vs_hf", "bandwidth_fraction", "cached_vs_uncached", "batch_vs_hf")
_GPU_TARGETS = ("gpu_tokens_per_s", "gpu_tokens_equal")


class NoGPUError(RuntimeError):
    """Raised when the GPU benchmark is asked to run without a CUDA GPU."""


@dataclass
class DecodeSettings:
    """What is measured; stored verbatim in the record. The model defaults are GPT-2 small's."""

    device: str = "cpu"
    threads: int = 2
    prompt_len: int = 32
    new_tokens: int = 32
    batch: int = 8
    context: int = 1024
    repeats: int = 5
    bandwidth_mib: int = 512
    seed: int = 0
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257
    n_positions: int = 1024
    gpu_new_tokens: int = 128
    gpu_compare_tokens: int = 32

    def __post_init__(self):
        if self.device not in DEFAULT_OUT:
            raise ValueError(f"device must be one of {tuple(DEFAULT_OUT)}, got {self.device!r}")
        for name in ("threads", "prompt_len", "new_tokens", "batch", "context", "repeats", "bandwidth_mib",
                     "n_layer", "n_head", "n_embd", "vocab_size", "n_positions", "gpu_new_tokens",
                     "gpu_compare_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.new_tokens < 3:
            raise ValueError(f"new_tokens must be >= 3 (the bound times the tokens after the first and an "
                             f"untimed step), got {self.new_tokens}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if self.prompt_len + max(self.new_tokens, self.gpu_new_tokens) > self.n_positions:
            raise ValueError(f"prompt_len + new tokens must fit the context window n_positions={self.n_positions}")
        if self.context > self.n_positions:
            raise ValueError(f"context={self.context} must be <= n_positions={self.n_positions}")
        if self.gpu_compare_tokens > self.gpu_new_tokens:
            raise ValueError("gpu_compare_tokens must be <= gpu_new_tokens")


# ----------------------------------------------------------------------------------------
# Pieces (each tested on the CPU)
# ----------------------------------------------------------------------------------------

def gpt2_pair(settings: DecodeSettings, dtype: torch.dtype = torch.float32):
    """``(hf_model, our_model)``: a random ``GPT2LMHeadModel`` of the settings' shape (seeded) and
    the book's GPT with the same weights, both in eval mode, on the CPU, in ``dtype``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(settings.seed)
    config = GPT2Config(n_layer=settings.n_layer, n_head=settings.n_head, n_embd=settings.n_embd,
                        vocab_size=settings.vocab_size, n_positions=settings.n_positions,
                        bos_token_id=None, eos_token_id=None)  # no end-of-text: always new_tokens tokens
    hf = GPT2LMHeadModel(config).eval()
    ours = GPT.from_hf_gpt2(hf)
    return hf.to(dtype), ours.to(dtype)


def measure_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Memory read bandwidth in bytes/s: the median time to sum a ``mib`` MiB float32 tensor
    (far larger than the caches, so every byte comes from memory), on 2 MB pages where the
    system gives them (:func:`~transformer_book.cpu_kernels.on_huge_pages`), like the C decoding
    step's own copy of its weights: the ceiling and the step read the same kind of memory."""
    _checks.positive_int("mib", mib)
    _checks.positive_int("repeats", repeats)
    x = cpu_kernels.on_huge_pages(mib * 2**20 // 4).fill_(1.0)  # every page touched once
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    return x.nbytes / statistics.median(times)


def bytes_per_token(model: GPT, context: int, batch: int = 1) -> int:
    """Bytes one decoding step reads: every weight once (the position table only one row, the
    token table serves as the LM head) plus every sequence's cached keys and values."""
    c = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    wpe = model.wpe.weight
    weights -= (wpe.shape[0] - 1) * wpe.shape[1] * wpe.element_size()
    return weights + kv_cache_bytes(c.n_layer, c.kv_heads, c.n_embd // c.n_head, context, batch, wpe.dtype)


def interleaved(fns: dict, repeats: int) -> dict:
    """Run each callable of ``fns`` once per repetition, in an order that rotates, ``repeats``
    times; returns ``{name: [seconds, ...]}`` (what each call returned is ignored)."""
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t)
    return times


def median_ratio(numerator: list, denominator: list) -> float:
    """Median over repetitions of ``numerator[i] / denominator[i]`` (a ratio taken side by side)."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need two equally long non-empty lists, got {len(numerator)} and {len(denominator)}")
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def _hf_generate(hf, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=None, do_sample=False, num_beams=1,
                              eos_token_id=None, pad_token_id=0, use_cache=True)
    with torch.inference_mode():
        return hf.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)


def bound_pairs(model: GPT, prompt: torch.Tensor, new_tokens: int, repeats: int,
                chunk: int = 1) -> tuple[list, list]:
    """``(read, step)``: seconds a token to read (sum) as many bytes as one decoding step reads,
    on 2 MB pages as :func:`measure_bandwidth` reads them, and seconds a token of greedy
    decoding (:meth:`GPT.decode_greedy`, ``chunk`` tokens a call), in pairs taken back to back,
    for ``new_tokens - 2`` tokens, ``repeats`` times: each repetition first runs the prompt and
    one step untimed (the step sets the decoder up for its new cache, chapter 8's C loop
    included). ``read[i] / step[i]`` is the fraction of the bandwidth ceiling that pair ``i``
    reached; pairing keeps a neighbour's load on both sides alike. ``chunk=1`` is one call a
    token; a larger ``chunk`` measures the loop as :func:`~transformer_book.generate.generate`
    runs it (with chapter 8's C loop, all of a call's tokens chosen in C)."""
    _checks.integer("new_tokens", new_tokens, 3)
    repeats, chunk = _checks.positive_int("repeats", repeats), _checks.positive_int("chunk", chunk)
    per_token = bytes_per_token(model, prompt.shape[1] + new_tokens // 2, prompt.shape[0])
    block = cpu_kernels.on_huge_pages(per_token // 4).fill_(1.0)  # as many bytes as a step reads
    block.sum()
    read, step = [], []
    for r in range(repeats):
        cache = model.new_cache(prompt.shape[0], prompt.shape[1] + new_tokens)
        token = model.decode_step(prompt, cache).argmax(-1, keepdim=True)
        token = model.decode_step(token, cache).argmax(-1, keepdim=True)
        for i, done in enumerate(range(0, new_tokens - 2, chunk)):
            n = min(chunk, new_tokens - 2 - done)
            for what in (("read", "step") if (r + i) % 2 else ("step", "read")):
                t = time.perf_counter()
                if what == "read":
                    for _ in range(n):
                        block.sum()
                else:
                    token = model.decode_greedy(token, cache, n, check=False)[:, -1:]
                (read if what == "read" else step).append((time.perf_counter() - t) / n)
    return read, step


def measure_bound(model: GPT, prompt: torch.Tensor, new_tokens: int, repeats: int, chunk: int = 8) -> dict:
    """:func:`bound_pairs` summed up: bytes per token, the bandwidth and the ceiling it gives,
    the decoder's tokens/s and its fraction of the ceiling (the median of the paired ratios)."""
    per_token = bytes_per_token(model, prompt.shape[1] + new_tokens // 2, prompt.shape[0])
    read, step = bound_pairs(model, prompt, new_tokens, repeats, chunk)
    return {"bytes_per_token": per_token, "read_seconds": read, "step_seconds": step, "tokens_per_call": chunk,
            "bandwidth_bytes_per_s": per_token / statistics.median(read),
            "tokens_per_s": 1 / statistics.median(step), "ceiling_tokens_per_s": 1 / statistics.median(read),
            "fraction_of_ceiling": median_ratio(read, step)}


def _bound_only(s: DecodeSettings) -> dict:
    """The float32 bound alone (``--bound-only``): what a notebook asks of a fresh process whose
    OpenMP threads wait the way OpenMP does by default."""
    with _torch_threads(s.threads):
        _, ours = gpt2_pair(s)
        prompt = torch.randint(s.vocab_size, (1, s.prompt_len), generator=torch.Generator().manual_seed(s.seed))
        bound = measure_bound(ours, prompt, s.new_tokens, s.repeats)
    return {k: v for k, v in bound.items() if not k.endswith("_seconds")} | {
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch_threads": s.threads}


def _target(name: str, value, extra: dict | None = None) -> dict:
    what, target = TARGETS[name]
    return {"what": what, "target": target, "value": value, "met": bool(value >= target), **(extra or {})}


def _machine() -> dict:
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:  # whether the 2 MB pages of the ceiling's buffer and the step's copy could be had
        huge_pages = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        huge_pages = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "transparent_hugepage": huge_pages,
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


# ----------------------------------------------------------------------------------------
# The CPU run
# ----------------------------------------------------------------------------------------

def run_cpu_benchmark(settings: DecodeSettings, progress=print) -> dict:
    """Measure the CPU targets (see the module docstring); returns the record (not written)."""
    with _torch_threads(settings.threads):
        return _run_cpu(settings, progress)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run the body with ``n`` torch threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_cpu(s: DecodeSettings, progress) -> dict:
    load_before = _machine()["loadavg"]
    hf, ours = gpt2_pair(s)
    g = torch.Generator().manual_seed(s.seed)
    prompt = torch.randint(s.vocab_size, (1, s.prompt_len), generator=g)
    prompts = torch.randint(s.vocab_size, (s.batch, s.prompt_len), generator=g)
    results, targets = {}, {}

    progress("batch 1: identical greedy tokens, then book vs Hugging Face generate ...")
    equal = torch.equal(generate(ours, prompt, s.new_tokens), _hf_generate(hf, prompt, s.new_tokens))
    times = interleaved({"book": lambda: generate(ours, prompt, s.new_tokens),
                         "hf": lambda: _hf_generate(hf, prompt, s.new_tokens)}, s.repeats)
    ratio = median_ratio(times["hf"], times["book"])
    results["batch1"] = {"tokens_equal": equal, "seconds": times,
                         "book_tokens_per_s": s.new_tokens / statistics.median(times["book"]),
                         "hf_tokens_per_s": s.new_tokens / statistics.median(times["hf"]), "ratio": ratio}
    targets["batch1_vs_hf"] = _target("batch1_vs_hf", ratio if equal else 0.0, {"tokens_equal": equal})

    progress("the bandwidth bound: a read of the same bytes next to every decoding step (float32, bfloat16) ...")
    ours_bf16 = GPT.from_hf_gpt2(hf).to(torch.bfloat16)
    bound = {}
    for name, model in (("float32", ours), ("bfloat16", ours_bf16)):
        bound[name] = measure_bound(model, prompt, s.new_tokens, s.repeats)
    del ours_bf16
    results["bound"] = bound
    targets["bandwidth_fraction"] = _target("bandwidth_fraction", bound["float32"]["fraction_of_ceiling"])

    progress(f"one token at context {s.context}: cached vs uncached ...")
    seq = torch.randint(s.vocab_size, (1, s.context), generator=g)
    cache = ours.new_cache(1, s.context)
    ours.decode_step(seq[:, :-1], cache)  # the context, cached once

    def cached():
        cache.crop(s.context - 1)
        ours.decode_step(seq[:, -1:], cache)

    def uncached():
        with torch.inference_mode():
            ours(seq)  # chapter 7's generate(use_cache=False): the whole window each token

    times = interleaved({"cached": cached, "uncached": uncached}, max(3, s.repeats // 2))
    ratio = median_ratio(times["uncached"], times["cached"])
    results["context"] = {"context": s.context, "seconds": times, "ratio": ratio}
    targets["cached_vs_uncached"] = _target("cached_vs_uncached", ratio)

    progress(f"batch {s.batch}: book vs Hugging Face generate ...")
    equal = torch.equal(generate(ours, prompts, s.new_tokens), _hf_generate(hf, prompts, s.new_tokens))
    times = interleaved({"book": lambda: generate(ours, prompts, s.new_tokens),
                         "hf": lambda: _hf_generate(hf, prompts, s.new_tokens)}, s.repeats)
    ratio = median_ratio(times["hf"], times["book"])
    n = s.batch * s.new_tokens
    results["batch"] = {"batch": s.batch, "tokens_equal": equal, "seconds": times,
                        "book_tokens_per_s": n / statistics.median(times["book"]),
                        "hf_tokens_per_s": n / statistics.median(times["hf"]), "ratio": ratio}
    targets["batch_vs_hf"] = _target("batch_vs_hf", ratio if equal else 0.0, {"tokens_equal": equal})

    provenance = collect_provenance()
    provenance["machine"] = _machine() | {"loadavg_before": load_before}
    provenance["torch_threads"] = s.threads
    # How idle OpenMP threads wait between the step's parallel products changes the result
    provenance["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    provenance["cpu_kernels"] = cpu_kernels.status()
    record = {"schema": SCHEMA, "device": "cpu", "settings": asdict(s), "provenance": provenance,
              "results": results, "targets": targets}
    validate_record(record)
    return record


# ----------------------------------------------------------------------------------------
# The GPU run
# ----------------------------------------------------------------------------------------

class CUDAGraphDecoder:
    """Greedy decoding where one decoding step is a recorded CUDA graph, replayed for every token.

    A :class:`~transformer_book.kv_cache.GraphKVCache` gives every step the same shapes and
    addresses; the step (token in :attr:`token` -> next token in :attr:`token`) is recorded
    once and then each token costs one ``graph.replay()`` instead of hundreds of kernel
    launches from Python. The prompt goes through the model eagerly (its shape differs).

    ``use_graph=False`` runs the very same step eagerly (any device): how the loop is tested
    on a CPU, and the "static cache, no graph" row of the benchmark.
    """

    def __init__(self, model: GPT, batch_size: int, max_len: int, use_graph: bool = True) -> None:
        if use_graph and not torch.cuda.is_available():
            raise NoGPUError("a CUDA graph needs a CUDA GPU (use_graph=False runs the same step eagerly)")
        self.model = model.eval()
        model.prepare_decoding()  # the recorded step runs decode_step(check=False): weights as they are now
        self.cache = GraphKVCache.for_model(model, batch_size, max_len)
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=self.cache.device)  # the step's input
        self.use_graph, self.graph = use_graph, None

    def _step(self) -> None:
        """One token: read :attr:`token`, write the cache, put the greedy next token in :attr:`token`."""
        logits = self.model.decode_step(self.token, self.cache, check=False)  # (B, V)
        self.token.copy_(logits.argmax(-1, keepdim=True))

    def _capture(self) -> None:
        stream = torch.cuda.Stream()  # warm up off the main stream, as torch.cuda.graphs asks
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.cache.reset()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()  # recorded, not run: the host counted one step that never happened
        self.cache.reset()

    def generate(self, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """``(B, T)`` prompt -> ``(B, T + max_new_tokens)`` greedy tokens."""
        b, t = prompt.shape
        if t + max_new_tokens > self.cache.max_len:
            raise ValueError(f"prompt ({t}) + max_new_tokens ({max_new_tokens}) exceeds the cache's "
                             f"max_len={self.cache.max_len}")
        if self.use_graph and self.graph is None:
            self._capture()
        self.cache.reset()
        prompt = prompt.to(self.cache.device)
        out = torch.empty(b, t + max_new_tokens, dtype=torch.long, device=self.cache.device)
        out[:, :t] = prompt
        self.token.copy_(self.model.decode_step(prompt, self.cache).argmax(-1, keepdim=True))  # prefill
        for i in range(t, t + max_new_tokens):
            out[:, i:i + 1] = self.token
            if i + 1 < t + max_new_tokens:
                if self.graph is not None:
                    self.graph.replay()  # advances cache.position on the device
                else:
                    self._step()
        self.cache.sync_length()
        return out


def _cuda_time(fn, repeats: int) -> list:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def run_cuda_benchmark(settings: DecodeSettings, progress=print) -> dict:
    """Measure the GPU targets (see the module docstring); returns the record (not written)."""
    if not torch.cuda.is_available():
        raise NoGPUError("no CUDA GPU is available")
    s = settings
    hf, ours = gpt2_pair(s)
    with torch.no_grad():  # the same weights on both sides: rounded to float16 once
        for p in list(ours.parameters()) + list(hf.parameters()):
            p.copy_(p.half().float())
    g = torch.Generator().manual_seed(s.seed)
    prompt = torch.randint(s.vocab_size, (1, s.prompt_len), generator=g)
    progress("CPU float32 reference tokens ...")
    reference = generate(ours, prompt, s.gpu_compare_tokens)[0, s.prompt_len:]
    with torch.inference_mode():
        ref_logits = ours(generate(ours, prompt, s.gpu_compare_tokens)).logits[0, s.prompt_len - 1:-1]
    top2 = ref_logits.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()

    device = torch.device("cuda")
    model = ours.to(device=device, dtype=torch.float16)
    hf = hf.to(device=device, dtype=torch.float16)
    max_len = s.prompt_len + s.gpu_new_tokens
    progress("static cache + CUDA graph, static cache eagerly, Hugging Face generate (float16, batch 1) ...")
    graph = CUDAGraphDecoder(model, 1, max_len, use_graph=True)
    eager = CUDAGraphDecoder(model, 1, max_len, use_graph=False)
    tokens = graph.generate(prompt, s.gpu_new_tokens)[0, s.prompt_len:].cpu()
    same = (tokens[:s.gpu_compare_tokens] == reference).tolist()
    n_equal = same.index(False) if False in same else len(same)
    eager_tokens = eager.generate(prompt, s.gpu_new_tokens)[0, s.prompt_len:].cpu()
    rows = {}
    for name, fn in (("cuda_graph", lambda: graph.generate(prompt, s.gpu_new_tokens)),
                     ("static_eager", lambda: eager.generate(prompt, s.gpu_new_tokens)),
                     ("hf_generate", lambda: _hf_generate(hf, prompt.to(device), s.gpu_new_tokens))):
        fn()  # warm-up
        times = _cuda_time(fn, s.repeats)
        rows[name] = {"seconds": times, "tokens_per_s": s.gpu_new_tokens / statistics.median(times)}
    bw = bytes_per_token(model, s.prompt_len + s.gpu_new_tokens // 2)
    results = {"rows": rows, "tokens": tokens.tolist(), "reference_tokens": reference.tolist(),
               "eager_tokens_equal_graph": bool(torch.equal(eager_tokens, tokens)),
               "leading_tokens_equal": n_equal, "reference_top2_margins": margins,
               "bytes_per_token": bw}
    targets = {"gpu_tokens_per_s": _target("gpu_tokens_per_s", rows["cuda_graph"]["tokens_per_s"]),
               "gpu_tokens_equal": _target("gpu_tokens_equal", n_equal,
                                           {"first_margin_at_divergence": margins[n_equal] if n_equal < len(margins) else None})}
    provenance = collect_provenance()
    provenance["machine"] = _machine()
    record = {"schema": SCHEMA, "device": "cuda", "settings": asdict(s), "provenance": provenance,
              "results": results, "targets": targets}
    validate_record(record)
    return record


# ----------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------

def validate_record(record) -> None:
    """Raise ``ValueError`` naming the first problem if ``record`` is not a decode benchmark record."""
    if not isinstance(record, dict):
        raise ValueError(f"record must be a dict, got {type(record).__name__}")
    if record.get("schema") != SCHEMA:
        raise ValueError(f"record['schema'] must be {SCHEMA!r}, got {record.get('schema')!r}")
    device = record.get("device")
    if device not in DEFAULT_OUT:
        raise ValueError(f"record['device'] must be one of {tuple(DEFAULT_OUT)}, got {device!r}")
    for key in ("settings", "provenance", "results", "targets"):
        if not isinstance(record.get(key), dict):
            raise ValueError(f"record[{key!r}] must be a dict")
    for key in ("date_utc", "torch", "git"):
        if key not in record["provenance"]:
            raise ValueError(f"record['provenance'] lacks {key!r}")
    if device == "cuda" and not (record["provenance"].get("gpu") or {}).get("name"):
        raise ValueError("a cuda record needs record['provenance']['gpu']['name']")
    expected = _CPU_TARGETS if device == "cpu" else _GPU_TARGETS
    for name in expected:
        row = record["targets"].get(name)
        if not isinstance(row, dict) or not {"target", "value", "met"} <= set(row):
            raise ValueError(f"record['targets'][{name!r}] must be a dict with target, value and met, got {row!r:.80}")


def write_record(record: dict, path) -> Path:
    """Validate, then write ``record`` to ``path`` atomically (a reader never sees half a file)."""
    validate_record(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_record(path) -> dict:
    """Read and validate a record (``ValueError`` if it is broken)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    validate_record(record)
    return record


def summary(record: dict) -> str:
    """One line per target: measured value, target, met or not."""
    lines = []
    for name, row in record["targets"].items():
        value = row["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"{name:20s} {shown:>10s}  (target >= {row['target']})  {'met' if row['met'] else 'NOT met'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Command line (python -m transformer_book.bench decode ...)
# ----------------------------------------------------------------------------------------

def add_parser(subparsers) -> None:
    p = subparsers.add_parser("decode", help="chapter 8: KV-cache decoding vs Hugging Face and the bandwidth bound")
    p.add_argument("--device", choices=tuple(DEFAULT_OUT), default="cpu")
    p.add_argument("--out", default=None, help="where to write the JSON (default book/data/decode_bench_<device>.json)")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (default 2, like CI)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--bound-only", action="store_true",
                   help="measure only the float32 bandwidth bound and print it as one JSON line (no file)")


def run(args) -> int:
    try:
        settings = DecodeSettings(device=args.device, threads=args.threads, repeats=args.repeats,
                                  new_tokens=args.new_tokens, context=args.context)
    except ValueError as err:
        print(f"transformer_book.bench decode: {err}", file=sys.stderr)
        return 2
    if getattr(args, "bound_only", False):
        if settings.device != "cpu":
            print("transformer_book.bench decode: --bound-only measures the CPU", file=sys.stderr)
            return 2
        print(json.dumps(_bound_only(settings)))
        return 0
    out = args.out or DEFAULT_OUT[settings.device]
    progress = lambda msg: print(msg, flush=True)  # noqa: E731
    if settings.device == "cpu" and os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        progress("note: OMP_WAIT_POLICY=PASSIVE: OpenMP's idle threads sleep between the decoder's calls "
                 "and wake slowly at the start of each; unset it to measure what this machine can do")
    try:
        if settings.device == "cpu":
            record = run_cpu_benchmark(settings, progress)
        else:
            record = run_cuda_benchmark(settings, progress)
    except NoGPUError as err:
        print(f"transformer_book.bench decode: {err}; no file was written ({out} is untouched).", file=sys.stderr)
        return 2
    write_record(record, out)
    print(summary(record))
    print(f"wrote {out}")
    return 0
