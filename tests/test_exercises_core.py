"""transformer_book.exercises.core: verdicts for right and wrong learner functions."""

from __future__ import annotations

import math
import re
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transformer_book.exercises.core import Case, CheckReport, check_function, compare_values, summarize

torch.set_num_threads(1)


def _verdict(capsys) -> str:
    return capsys.readouterr().out


# --------------------------------------------------------------------------- kind 1: a float tensor (softmax)

def softmax_t_reference(x, t):
    return torch.softmax(x / t, dim=-1)


def softmax_cases():
    g = torch.Generator().manual_seed(0)
    return [
        Case(args=(torch.tensor([1.0, 2.0, 3.0]), 1.0), label="three logits, t=1",
             hint="exp(x / t), divided by its sum."),
        Case(args=(torch.tensor([[1000.0, 1001.0, 1002.0]]), 2.0), label="large logits, t=2",
             hint="Subtract the row's maximum before the exponential."),
        Case(args=(torch.randn(2, 3, 4, generator=g), 0.5), label="batch (2, 3, 4), t=0.5"),
    ]


def check_softmax_t(fn, **kwargs):
    return check_function(fn, reference=softmax_t_reference, cases=softmax_cases(),
                          exercise="ex-00-softmax-t", **kwargs)


def good_softmax_t(x, t):
    """Stable softmax of x / t."""
    z = x / t
    z = z - z.max(dim=-1, keepdim=True).values
    e = z.exp()
    return e / e.sum(dim=-1, keepdim=True)


def test_softmax_correct_passes(capsys):
    report = check_softmax_t(good_softmax_t)
    out = _verdict(capsys)
    assert report.passed and not report.not_done and report.status == "passed"
    assert out.splitlines()[0] == "ex-00-softmax-t · good_softmax_t: PASSED (3/3 cases)"
    assert "✗" not in out
    assert bool(report) is True


def test_softmax_overflow_nan(capsys):
    def naive(x, t):
        e = (x / t).exp()
        return e / e.sum(dim=-1, keepdim=True)

    report = check_softmax_t(naive)
    out = _verdict(capsys)
    assert not report.passed
    assert out.splitlines()[0] == "ex-00-softmax-t · naive: FAILED (2/3 cases passed)"
    assert "✗ large logits, t=2: output contains NaN (3 of 3 values)" in out
    assert "input:    x = tensor float32 (1, 3) [1000, 1001, 1002]; t = 2" in out
    assert "received: tensor float32 (1, 3) [nan, nan, nan]" in out
    assert "hint:     Subtract the row's maximum before the exponential." in out
    assert "Traceback" not in out


def test_softmax_wrong_scale(capsys):
    def doubled(x, t):
        return 2 * torch.softmax(x / t, dim=-1)

    check_softmax_t(doubled)
    out = _verdict(capsys)
    assert "output differs in 3 of 3 values" in out
    assert "≈ 2 × the expected ones" in out
    # only the first failed case gets the details and the hint
    assert out.count("hint:") == 1 and out.count("input:") == 1


def test_softmax_ignores_temperature(capsys):
    def no_t(x, t):
        return torch.softmax(x, dim=-1)

    report = check_softmax_t(no_t)
    out = _verdict(capsys)
    assert [c.passed for c in report.cases] == [True, False, False]
    assert re.search(r"first at output\[0, 0\]: got 0\.09003, expected 0\.1863", out)


def test_softmax_transposed(capsys):
    def transposed(x, t):
        return torch.softmax(x / t, dim=-1).transpose(-1, -2)

    check_softmax_t(transposed)
    out = _verdict(capsys)
    assert "output has shape (3, 1); expected (1, 3) (the last two dimensions look swapped)" in out


def test_softmax_wrong_dtype(capsys):
    check_softmax_t(lambda x, t: torch.softmax(x.double() / t, dim=-1))
    out = _verdict(capsys)
    assert "output has dtype float64; expected float32" in out
    check_softmax_t(lambda x, t: torch.softmax(x.double() / t, dim=-1), check_dtype=False)
    assert "PASSED (3/3 cases)" in _verdict(capsys)


def test_softmax_exception_shows_type_message_and_line_not_traceback(capsys):
    def broken(x, t):
        y = x / t
        return torch.softmax(y, dim=5)

    report = check_softmax_t(broken)
    out = _verdict(capsys)
    assert not report.passed
    assert "raised IndexError: Dimension out of range" in out
    assert "(at line 3 of broken: return torch.softmax(y, dim=5))" in out
    assert "Traceback" not in out and "File " not in out
    assert "received: IndexError instead of a value" in out


def test_softmax_returns_none(capsys):
    def forgot_return(x, t):
        torch.softmax(x / t, dim=-1)

    check_softmax_t(forgot_return)
    out = _verdict(capsys)
    assert "output is None (did the function forget to `return` its result?)" in out


def test_softmax_mutates_input(capsys):
    cases = softmax_cases()
    before = [c.args[0].clone() for c in cases]

    def in_place(x, t):
        x /= t
        return torch.softmax(x, dim=-1)

    report = check_function(in_place, reference=softmax_t_reference, cases=cases, exercise="ex-00-softmax-t")
    out = _verdict(capsys)
    # t=1 leaves x unchanged, the other two cases catch it
    assert [c.passed for c in report.cases] == [True, False, False]
    assert "it changed its input `x` in place" in out
    # the checker's own cases are intact (the learner got deep copies)
    for c, b in zip(cases, before):
        assert torch.equal(c.args[0], b)
    report = check_function(in_place, reference=softmax_t_reference, cases=cases, exercise="ex-00-softmax-t",
                            allow_mutation=True)
    assert report.passed


def test_not_implemented_is_not_done(capsys):
    calls = []

    def todo(x, t):
        calls.append(1)
        raise NotImplementedError("Exercise ex-00-softmax-t: write this function")

    report = check_softmax_t(todo)
    out = _verdict(capsys)
    assert report.not_done and not report.passed and report.status == "not done"
    assert out.startswith("ex-00-softmax-t · todo: not done yet")
    assert out.count("\n") == 1  # one line, no wall
    assert len(calls) == 1  # stops at the first case
    assert repr(report) == "<CheckReport ex-00-softmax-t · todo: not done yet>"


def test_not_implemented_from_inside_a_library_is_an_error(capsys):
    class Library:
        def op(self, x):
            raise NotImplementedError("this op is not implemented for sparse tensors")

    lib = Library()
    Library.op.__code__ = Library.op.__code__.replace(co_filename=torch.__file__)  # pretend it is torch's code

    def calls_library(x, t):
        return lib.op(x)

    report = check_softmax_t(calls_library)
    out = _verdict(capsys)
    assert not report.not_done and not report.passed
    assert "raised NotImplementedError: this op is not implemented for sparse tensors" in out
    assert "(at line 2 of calls_library: return lib.op(x))" in out


def test_not_callable(capsys):
    report = check_softmax_t(good_softmax_t(torch.tensor([1.0]), 1.0))
    out = _verdict(capsys)
    assert not report.passed and report.error
    assert out.startswith("ex-00-softmax-t · your function: FAILED — expected a function, got tensor float32 (1,)")
    assert "without calling it" in out
    check_softmax_t(None)
    assert "expected a function, got None" in _verdict(capsys)


# --------------------------------------------------------------------------- runaway functions

def test_infinite_loop_is_stopped_and_checker_still_works(capsys):
    n_threads = threading.active_count()

    def forever(x, t):
        while True:
            pass

    t0 = time.perf_counter()
    report = check_softmax_t(forever, timeout_s=0.3)
    elapsed = time.perf_counter() - t0
    out = _verdict(capsys)
    assert not report.passed
    assert "did not return within 0.3 s, so it was stopped (an endless loop?" in out
    # one runaway is enough: the other cases are not run (no waiting for the limit again)
    assert out.count("not run (an earlier case did not return in time)") == 2
    assert elapsed < 0.3 + 1.5
    deadline = time.monotonic() + 1.0
    while threading.active_count() > n_threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == n_threads
    # the checker (and this process) still work
    assert check_softmax_t(good_softmax_t).passed
    assert "PASSED (3/3 cases)" in _verdict(capsys)


def test_loop_that_catches_exception_is_still_stopped(capsys):
    def stubborn(x, t):
        while True:
            try:
                time.sleep(0.001)
            except Exception:  # the stop signal is a BaseException: this does not catch it
                pass

    report = check_softmax_t(stubborn, timeout_s=0.2)
    assert "so it was stopped" in _verdict(capsys) and not report.passed


def test_stuck_in_one_c_call_is_reported(capsys):
    n_threads = threading.active_count()

    def sleeper(x, t):
        time.sleep(1.6)  # one C call: the injected exception waits until it returns
        return torch.softmax(x / t, dim=-1)

    report = check_softmax_t(sleeper, timeout_s=0.1)
    out = _verdict(capsys)
    assert not report.passed
    assert "could not be stopped: it is stuck inside one long C call" in out
    time.sleep(1.0)  # it finishes in the background
    assert threading.active_count() == n_threads


def test_system_exit_in_learner_code_is_caught(capsys):
    def quits(x, t):
        raise SystemExit(3)

    report = check_softmax_t(quits)
    assert "raised SystemExit: 3" in _verdict(capsys) and not report.passed


def test_no_time_limit_runs_in_this_thread(capsys):
    seen = []

    def record(x, t):
        seen.append(threading.current_thread() is threading.main_thread())
        return good_softmax_t(x, t)

    assert check_softmax_t(record, timeout_s=None).passed
    assert seen and all(seen)


# --------------------------------------------------------------------------- kind 2: a tuple (attention)

def attention_reference(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    return w @ v, w


def attention_cases():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 8, generator=g) for _ in range(3))
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    return [Case(args=(q, k, v, torch.ones(4, 4, dtype=torch.bool)), label="no mask"),
            Case(args=(q, k, v, causal), label="causal mask", hint="True means 'may attend'.")]


def check_attention(fn):
    return check_function(fn, reference=attention_reference, cases=attention_cases(), exercise="ex-00-attention")


def test_attention_correct_passes_and_matches_torch(capsys):
    def mine(q, k, v, mask):
        """Scaled dot-product attention."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        d = q.shape[-1]
        w = torch.softmax((q @ k.transpose(-2, -1) / d**0.5).masked_fill(~mask, -torch.inf), dim=-1)
        return out, w

    assert check_attention(mine).passed
    assert "PASSED (2/2 cases)" in _verdict(capsys)


def test_attention_missing_sqrt_d(capsys):
    def unscaled(q, k, v, mask):
        w = torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~mask, -torch.inf), dim=-1)
        return w @ v, w

    check_attention(unscaled)
    assert re.search(r"✗ no mask: output\[0\] differs in \d+ of 64 values", _verdict(capsys))


def test_attention_off_by_one_mask(capsys):
    def shifted(q, k, v, mask):
        return attention_reference(q, k, v, mask.tril(-1) | torch.eye(4, dtype=torch.bool).roll(1, 0)
                                   if not mask.all() else mask)

    report = check_attention(shifted)
    out = _verdict(capsys)
    assert [c.passed for c in report.cases] == [True, False]
    assert "✗ causal mask: output[0] differs" in out
    assert "hint:     True means 'may attend'." in out


def test_attention_returns_only_output(capsys):
    check_attention(lambda q, k, v, mask: attention_reference(q, k, v, mask)[0])
    assert "output is a torch.Tensor; expected a tuple of 2 items" in _verdict(capsys)


def test_attention_transposed_weights(capsys):
    def transposed(q, k, v, mask):
        out, w = attention_reference(q, k, v, mask)
        return out, w.transpose(-2, -1)

    check_attention(transposed)
    assert "✗ no mask: output[1] differs in" in _verdict(capsys)


# --------------------------------------------------------------------------- kind 3: a boolean mask

def check_causal_mask(fn):
    cases = [Case(args=(n,), label=f"n={n}", hint="torch.tril keeps the diagonal and what is below it.")
             for n in (1, 3, 5)]
    return check_function(fn, reference=lambda n: torch.ones(n, n, dtype=torch.bool).tril(), cases=cases,
                          exercise="ex-00-causal-mask")


def test_mask_correct(capsys):
    assert check_causal_mask(lambda n: torch.arange(n)[:, None] >= torch.arange(n)[None, :]).passed


def test_mask_off_by_one(capsys):
    report = check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1))
    out = _verdict(capsys)
    assert not report.passed
    assert "✗ n=1: output differs in 1 of 1 values; first at output[0, 0]: got False, expected True" in out
    assert "input:    n = 1" in out


def test_mask_float_instead_of_bool(capsys):
    check_causal_mask(lambda n: torch.ones(n, n).tril())
    assert "output has dtype float32; expected bool" in _verdict(capsys)


def test_mask_inverted_and_wrong_shape(capsys):
    check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool).triu(1))
    assert "got False, expected True" in _verdict(capsys)
    check_causal_mask(lambda n: torch.ones(1, n, n, dtype=torch.bool).tril())
    assert "output has shape (1, 1, 1); expected (1, 1) (same number of values: reshaped or transposed?)" \
        in _verdict(capsys)


# --------------------------------------------------------------------------- kind 4: a list (one BPE merge)

def merge_reference(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def check_merge(fn, **kw):
    cases = [Case(args=([1, 2, 3, 1, 2], (1, 2), 9), label="two matches"),
             Case(args=([1, 1, 1], (1, 1), 7), label="overlap",
                  hint="After a merge, skip both ids: matches never overlap."),
             Case(args=([], (1, 2), 9), label="empty")]
    return check_function(fn, reference=merge_reference, cases=cases, exercise="ex-00-merge", **kw)


def test_merge_correct(capsys):
    def merge(ids, pair, new_id):
        """One merge step."""
        text = " ".join(map(str, ids)) + " "
        return [int(s) for s in text.replace(f"{pair[0]} {pair[1]} ", f"{new_id} ").split()]

    assert check_merge(merge).passed


def test_merge_overlapping_bug(capsys):
    def overlapping(ids, pair, new_id):
        out = []
        for i, a in enumerate(ids):
            if i + 1 < len(ids) and (a, ids[i + 1]) == pair:
                out.append(new_id)
            elif not (i > 0 and (ids[i - 1], a) == pair):
                out.append(a)
        return out

    report = check_merge(overlapping)
    out = _verdict(capsys)
    assert [c.status for c in report.cases] == ["passed", "failed", "passed"]
    assert "✗ overlap: output[1] is 7; expected 1" in out
    assert "expected: list of 2: [7, 1]" in out
    assert "received: list of 2: [7, 7]" in out


def test_merge_in_place_returns_none(capsys):
    def in_place(ids, pair, new_id):
        ids[:] = merge_reference(ids, pair, new_id)

    check_merge(in_place)
    out = _verdict(capsys)
    assert "output is None (did the function forget to `return` its result?)" in out
    assert "it changed its input `ids` in place" in out


def test_merge_index_error_line(capsys):
    def off_by_one(ids, pair, new_id):
        out = []
        for i in range(len(ids)):
            if (ids[i], ids[i + 1]) == pair:
                out.append(new_id)
        return out

    check_merge(off_by_one)
    out = _verdict(capsys)
    assert "raised IndexError: list index out of range (at line 4 of off_by_one: " \
           "if (ids[i], ids[i + 1]) == pair:)" in out


def test_max_details_shows_more(capsys):
    check_merge(lambda ids, pair, new_id: None, max_details=3)
    assert _verdict(capsys).count("input:") == 3


# --------------------------------------------------------------------------- kind 5: numpy, scalars, strings, dicts

def test_numpy_kind(capsys):
    cases = [Case(args=(np.arange(6.0).reshape(2, 3),), label="2x3")]
    ref = lambda a: a - a.mean(axis=-1, keepdims=True)  # noqa: E731
    assert check_function(lambda a: a - a.mean(-1)[:, None], ref, cases, exercise="ex-00-center").passed
    check_function(lambda a: a - a.mean(), ref, cases, exercise="ex-00-center")
    assert "output differs in 6 of 6 values" in _verdict(capsys)
    check_function(lambda a: torch.from_numpy(ref(a)), ref, cases, exercise="ex-00-center")
    assert "output is a torch.Tensor; expected a numpy array" in _verdict(capsys)
    check_function(lambda a: ref(a).astype(np.float32), ref, cases, exercise="ex-00-center")
    assert "output has dtype float32; expected float64" in _verdict(capsys)


def test_scalar_kind(capsys):
    cases = [Case(args=([1.0, 2.0, 4.0],), label="three values", hint="sum / count")]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert check_function(lambda xs: torch.tensor(xs).mean(), mean, cases, exercise="ex-00-mean").passed
    check_function(lambda xs: sum(xs) / (len(xs) - 1), mean, cases, exercise="ex-00-mean")
    assert "output is 3.5; expected 2.333" in _verdict(capsys)
    check_function(lambda xs: float("nan"), mean, cases, exercise="ex-00-mean")
    assert "output is nan; expected 2.333" in _verdict(capsys)
    check_function(lambda xs: "2.33", mean, cases, exercise="ex-00-mean")
    assert "output is '2.33'; expected a number (2.333)" in _verdict(capsys)


def test_string_and_dict_kinds(capsys):
    cases = [Case(args=("hello world",), label="two words")]
    assert check_function(lambda s: s.title(), str.title, cases, exercise="ex-00-title").passed
    check_function(lambda s: s.capitalize(), str.title, cases, exercise="ex-00-title")
    assert "output differs from the expected string at character 6: got 'world', expected 'World'" \
        in _verdict(capsys)

    def counts(s):
        out = {}
        for ch in s:
            out[ch] = out.get(ch, 0) + 1
        return out

    cases = [Case(args=("abca",), label="abca")]
    assert check_function(lambda s: {c: s.count(c) for c in set(s)}, counts, cases, exercise="ex-00-count").passed
    check_function(lambda s: {c: s.count(c) for c in set(s) - {"a"}}, counts, cases, exercise="ex-00-count")
    assert "output: missing keys ['a']" in _verdict(capsys)
    check_function(lambda s: {**counts(s), "a": 1}, counts, cases, exercise="ex-00-count")
    assert "output['a'] is 1; expected 2" in _verdict(capsys)


def test_expected_without_reference_and_per_case_tolerance(capsys):
    cases = [Case(args=(2.0,), expected=1.4142, label="sqrt 2", atol=1e-3)]
    assert check_function(math.sqrt, None, cases, exercise="ex-00-sqrt").passed
    cases = [Case(args=(2.0,), expected=1.4142, label="sqrt 2")]
    assert not check_function(math.sqrt, None, cases, exercise="ex-00-sqrt", atol=0, rtol=1e-9).passed


# --------------------------------------------------------------------------- custom comparison

def test_custom_compare(capsys):
    def same_multiset(expected, received):
        if sorted(received) != sorted(expected):
            return f"holds {sorted(received)}, expected the values {sorted(expected)} in any order"
        return None

    cases = [Case(args=([3, 1, 2],), label="three")]
    assert check_function(lambda xs: list(reversed(sorted(xs))), sorted, cases, exercise="ex-00-sort",
                          compare=same_multiset).passed
    check_function(lambda xs: xs[:2], sorted, cases, exercise="ex-00-sort", compare=same_multiset)
    assert "✗ three: holds [1, 3], expected the values [1, 2, 3] in any order" in _verdict(capsys)
    check_function(lambda xs: xs, sorted, cases, exercise="ex-00-sort", compare=lambda e, r: r == e)
    assert "✗ three: output is not what was expected" in _verdict(capsys)
    check_function(lambda xs: None, sorted, cases, exercise="ex-00-sort", compare=lambda e, r: len(r) == 3)
    assert "✗ three: could not be checked (TypeError: object of type 'NoneType' has no len())" in _verdict(capsys)


# --------------------------------------------------------------------------- the report object

def test_report_display_does_not_repeat_in_the_same_cell(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns.update(check_softmax_t=check_softmax_t, good_softmax_t=good_softmax_t)
    shell.run_cell("r = check_softmax_t(good_softmax_t)\nr", store_history=True)
    out = _verdict(capsys)
    assert out.count("PASSED (3/3 cases)") == 1
    assert "CheckReport" not in out
    shell.run_cell("r", store_history=True)  # a later cell shows it again
    assert _verdict(capsys).count("PASSED (3/3 cases)") == 1


def test_report_repr_and_quiet(capsys):
    report = check_softmax_t(good_softmax_t, quiet=True)
    assert _verdict(capsys) == ""
    assert isinstance(report, CheckReport)
    assert repr(report) == "<CheckReport ex-00-softmax-t · good_softmax_t: 3/3 passed>"
    assert str(report).startswith("ex-00-softmax-t · good_softmax_t: PASSED")
    assert report.n_passed == 3 and len(report.cases) == 3


# --------------------------------------------------------------------------- the checker author's mistakes

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(cases=[]), ValueError, "cases must be a non-empty list of Case"),
    (dict(cases=[(1, 2)]), TypeError, r"cases\[0\] must be a Case, got tuple"),
    (dict(exercise=""), ValueError, "exercise must be a non-empty str"),
    (dict(exercise=3), TypeError, "exercise must be a non-empty str"),
    (dict(reference=3), TypeError, "reference must be callable or None, got int"),
    (dict(atol=-1.0), ValueError, r"atol must be a (finite )?number >= 0(\.0)?, got -1.0"),
    (dict(rtol=float("nan")), ValueError, r"rtol must be a (finite )?number >= 0(\.0)?, got nan"),
    (dict(timeout_s=0), ValueError, r"timeout_s must be a (finite )?number > 0(\.0)?, got 0"),
    (dict(compare="yes"), TypeError, "compare must be callable or None, got str"),
    (dict(max_details=-1), ValueError, "max_details must be an int >= 0, got -1"),
    (dict(quiet=1), TypeError, "quiet must be a bool"),
    (dict(reference=None), ValueError, r"cases\[0\] \('one'\) has no expected value and reference is None"),
])
def test_bad_checker_arguments(kwargs, error, match):
    base = dict(fn=abs, reference=abs, cases=[Case(args=(1,), label="one")], exercise="ex-00-abs")
    with pytest.raises(error, match=match):
        check_function(**{**base, **kwargs})


def test_bad_case_arguments():
    with pytest.raises(TypeError, match=r"Case args must be a tuple .* got list"):
        Case(args=[1, 2])
    with pytest.raises(TypeError, match="Case kwargs must be a dict, got list"):
        Case(kwargs=[1])
    with pytest.raises(ValueError, match="Case atol must be a non-negative number or None, got -1"):
        Case(atol=-1)


# --------------------------------------------------------------------------- summaries and comparisons

def test_summarize():
    assert summarize(torch.zeros(2, 3)) == "tensor float32 (2, 3) [0, 0, 0, 0, …]"
    assert summarize(torch.tensor([float("nan"), 1.0])) == "tensor float32 (2,) [nan, 1] (NaN in 1 of 2 values)"
    assert summarize(np.ones(3, dtype=np.int64)) == "ndarray int64 (3,) [1, 1, 1]"
    assert summarize([1, 2]) == "list of 2: [1, 2]"
    assert summarize((torch.ones(1), 2)) == "tuple of 2: (tensor float32 (1,) [1]; 2)"
    assert summarize("x" * 200).endswith("(200 chars)")
    assert summarize(None) == "None"


def test_compare_values_rules():
    assert compare_values(torch.ones(2), torch.ones(2) + 1e-7) is None
    assert compare_values(torch.ones(2), torch.ones(2) + 1e-2) is not None
    assert compare_values(torch.tensor([float("nan")]), torch.tensor([float("nan")])) is None
    assert "contains inf" in compare_values(torch.ones(2), torch.tensor([1.0, float("inf")]))
    assert compare_values((1, [2.0, "a"]), [1, (2.0, "a")]) is None  # list and tuple are interchangeable
    assert compare_values(True, 1) == "output is an int; expected a bool (True)"
    assert compare_values(3, 3.0) is None
    assert compare_values(None, 0) == "output is 0; expected None"
    assert "is a numpy array; expected a torch.Tensor" in compare_values(torch.ones(1), np.ones(1))


# --------------------------------------------------------------------------- issue 10: the checker protects itself

def test_learner_who_breaks_torch_softmax_gets_a_verdict_and_the_next_check_works(capsys):
    real = torch.softmax

    def saboteur(x, t):
        torch.softmax = None  # the reference uses torch.softmax
        return real(x / t, dim=-1)

    try:
        report = check_softmax_t(saboteur)
    finally:
        broken = torch.softmax is not real
        torch.softmax = real
    assert not broken  # put back by the checker
    assert report.passed  # the reference ran on the restored torch: the values were right
    assert check_softmax_t(good_softmax_t).passed


def test_learner_who_deletes_a_torch_function_is_restored(capsys):
    real = torch.exp

    def deleter(x, t):
        del torch.exp
        return real(x / t) / real(x / t).sum(-1, keepdim=True)

    try:
        check_softmax_t(deleter)
    finally:
        ok = getattr(torch, "exp", None) is real
        torch.exp = real
    assert ok


class _HangingRepr:
    def __repr__(self):
        while True:
            time.sleep(0.001)

    __str__ = __repr__


def test_a_result_whose_repr_hangs_gets_a_verdict(capsys):
    t0 = time.perf_counter()
    report = check_softmax_t(lambda x, t: _HangingRepr(), timeout_s=0.3)
    out = _verdict(capsys)
    assert not report.passed and time.perf_counter() - t0 < 3 * (0.3 + 1.5)
    assert "could not be checked (did not finish within 0.3 s)" in out
    assert check_softmax_t(good_softmax_t).passed


def test_an_exception_whose_str_hangs_gets_a_verdict(capsys):
    class Weird(Exception):
        def __str__(self):
            while True:
                time.sleep(0.001)

    def raiser(x, t):
        raise Weird()

    report = check_softmax_t(raiser, timeout_s=0.3)
    assert not report.passed and "raised Weird" in _verdict(capsys)


def test_global_torch_state_is_restored_after_each_check(capsys):
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    rng = torch.random.get_rng_state()

    def meddler(x, t):
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        torch.set_num_threads(threads + 1)
        torch.manual_seed(123)
        return good_softmax_t(x, t)

    for timeout_s in (5.0, None):  # in a worker thread and in this one
        check_softmax_t(meddler, timeout_s=timeout_s)
        assert torch.get_default_dtype() == dtype and torch.is_grad_enabled()
        assert torch.get_num_threads() == threads
        assert torch.equal(torch.random.get_rng_state(), rng)


class _AlwaysEqual(torch.Tensor):
    def __eq__(self, other):
        return True

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.isclose, torch.Tensor.__ne__, torch.Tensor.ne):
            shape = next(a.shape for a in args if isinstance(a, torch.Tensor))
            value = func is torch.isclose
            return torch.full(shape, value, dtype=torch.bool)
        if func in (torch.allclose, torch.equal):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


class _AlwaysEqualInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


def test_subclasses_that_always_compare_equal_cannot_pass(capsys):
    assert compare_values(torch.ones(3), torch.zeros(3).as_subclass(_AlwaysEqual)) is not None
    assert compare_values(4, _AlwaysEqualInt(3)) == "output is 3; expected 4"
    report = check_softmax_t(lambda x, t: torch.zeros_like(x).as_subclass(_AlwaysEqual))
    assert not report.passed
    report = check_function(lambda n: _AlwaysEqualInt(0), reference=lambda n: n + 1,
                            cases=[Case(args=(3,), label="three")], exercise="ex-00-int", quiet=True)
    assert not report.passed
    # A tensor subclass with the right values still passes: nn.Parameter, say.
    assert compare_values(torch.ones(2), torch.nn.Parameter(torch.ones(2))) is None


def test_compare_and_summarize_check_their_arguments():
    with pytest.raises(ValueError, match="atol must be"):
        compare_values(torch.ones(1), torch.ones(1), atol=-1.0)
    with pytest.raises(TypeError, match="check_dtype must be a bool"):
        compare_values(torch.ones(1), torch.ones(1), check_dtype=1)
    with pytest.raises(ValueError, match="width must be a positive int"):
        summarize(torch.ones(1), width=0)


# --------------------------------------------------------------------------- messages that point at the mistake

def test_inputs_use_the_learners_parameter_names(capsys):
    def reference(n, prefix_len):
        return n + prefix_len

    def learner(n, p):
        return n - p

    report = check_function(learner, reference, [Case(args=(6, 3), label="n=6, p=3")], exercise="ex-00-names")
    assert report.cases[0].input == "n = 6; p = 3"
    assert "prefix_len" not in capsys.readouterr().out


def test_labels_are_compared_as_labels():
    msg = compare_values("full", "diagonal")
    assert msg == "output is 'diagonal'; expected 'full'"
    assert "character" in compare_values("hello world", "hello World")  # text still gets the diff


def test_in_place_mutation_shows_before_and_after_and_its_own_hint(capsys):
    def merge_in_place(ids, pair, new_id):
        i = 0
        while i < len(ids) - 1:
            if (ids[i], ids[i + 1]) == pair:
                ids[i:i + 2] = [new_id]
            i += 1
        return ids

    def reference(ids, pair, new_id):
        return merge_in_place(list(ids), pair, new_id)

    check_function(merge_in_place, reference, [Case(args=([1, 2, 3], (1, 2), 9), label="one match",
                                                    hint="About overlapping pairs.")], exercise="ex-00-mut")
    out = capsys.readouterr().out
    assert "before:   ids = list of 3: [1, 2, 3]" in out
    assert "after:    ids = list of 2: [9, 3]" in out
    assert "Your function changed `ids`" in out and "overlapping" not in out


def test_a_known_mistake_names_itself(capsys):
    def reference(xs):
        return sorted(xs)

    def reversed_sort(xs):
        return sorted(xs, reverse=True)

    mistakes = [(lambda xs: list(xs), "You returned the list unchanged."),
                (reversed_sort, "Ascending order: smallest first.")]
    report = check_function(reversed_sort, reference, [Case(args=([3, 1, 2],), hint="generic")],
                            exercise="ex-00-sort", mistakes=mistakes)
    assert report.cases[0].hint == "Ascending order: smallest first."
    report = check_function(lambda xs: xs[:1], reference, [Case(args=([3, 1, 2],), hint="generic")],
                            exercise="ex-00-sort", mistakes=mistakes, quiet=True)
    assert report.cases[0].hint == "generic"  # no known mistake matches: the case's hint
    with pytest.raises(TypeError, match=r"mistakes\[0\] must be a \(function, hint str\) pair"):
        check_function(reference, reference, [Case(args=([1],))], exercise="ex-00-sort", mistakes=[reference])
