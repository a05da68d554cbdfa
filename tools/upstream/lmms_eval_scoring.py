"""lmms-eval: how a model's `loglikelihood` results are scored. Needs lmms-eval (run it in lmms-eval's own
environment; nothing is downloaded and no model is loaded).

    python lmms_eval_scoring.py

lmms-eval's model API (`lmms.loglikelihood`, as in lm-evaluation-harness) returns, per request, the pair
(log-likelihood of the continuation, whether it is the greedy continuation). Two checks with lmms-eval's own
functions:

1. responses that are not text: the evaluator passes every model response through
   `lmms_eval.api.instance.unwrap_generation_output`, which in 0.7.3 turns anything but a string (or a
   `GenerationResult`, or a (str, dict) pair) into `str(output)`, so a (float, bool) pair from `loglikelihood`
   reaches the task as the string "(-1.25, True)" and every multiple_choice task fails when it unpacks it.
2. which option multiple_choice picks: `ConfigurableTask.process_results` takes `np.argmin` of the options'
   log-likelihoods (a comment there says its own models return a loss), so a model that returns
   log-likelihoods, as the API says, is scored on its *least* likely option.

Each check prints AFFECTED or FIXED. Without lmms-eval the script says so and exits with code 3.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace


def check_unwrap(unwrap_generation_output) -> bool:
    """True (fixed) when a loglikelihood pair comes out of the evaluator's unwrapping as the pair."""
    pair = (-1.25, True)
    got = unwrap_generation_output(pair)[0]
    ok = got == pair
    print(f"loglikelihood pair through unwrap_generation_output: {'FIXED' if ok else 'AFFECTED'}")
    if not ok:
        print(f"  {pair!r} -> {got!r}")
    return ok


def mc_task():
    """The attributes `process_results` reads of a multiple_choice task: options A, B, C, the answer A."""
    return SimpleNamespace(OUTPUT_TYPE="multiple_choice", config=SimpleNamespace(process_results=None),
                           _metric_fn_list={"acc": None}, multiple_input=False, multiple_target=False,
                           doc_to_choice=lambda doc: ["A", "B", "C"], doc_to_target=lambda doc: 0)


def check_multiple_choice(process_results) -> bool:
    """True (fixed) when the likeliest option (the right one, A) is scored correct. `process_results`: the
    unbound `ConfigurableTask.process_results` (without its retry wrapper)."""
    results = [(-0.1, True), (-2.5, False), (-4.0, False)]  # log-likelihoods: A is by far the likeliest
    acc = process_results(mc_task(), {"question": "?"}, results)["acc"]
    ok = acc == 1.0
    print(f"multiple_choice picks the likeliest option: {'FIXED' if ok else 'AFFECTED'}")
    if not ok:
        print(f"  log-likelihoods {[r[0] for r in results]} for A, B, C with A right: acc {acc} (it picked the "
              f"least likely)")
    return ok


def main() -> int:
    try:
        import lmms_eval  # noqa: F401
        from lmms_eval.api.instance import unwrap_generation_output
        from lmms_eval.api.task import ConfigurableTask
    except ImportError as exc:
        print(f"lmms-eval is not installed ({exc}): run this in lmms-eval's environment")
        return 3
    from importlib.metadata import version

    print(f"lmms-eval {version('lmms_eval')}")
    check_unwrap(unwrap_generation_output)
    process = ConfigurableTask.process_results
    check_multiple_choice(getattr(process, "__wrapped__", process))
    return 0


if __name__ == "__main__":
    sys.exit(main())
