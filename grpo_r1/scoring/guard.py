"""Guard a reward function: misbehaviour during training stops the run with a RewardError that
names the reward and the completion, never a silent zero."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import math
import numbers
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from grpo_r1.errors import RewardError
from rewards.parsing import completion_text, excerpt

RewardFunc = Callable[..., Any]

_GUARDED = "__grpo_r1_guarded__"
_TIMEOUT = "__grpo_r1_timeout_s__"

logger = logging.getLogger(__name__)

# A reward that skips (None) more than this fraction of a call's completions is warned about, then
# again at most every NONE_WARNING_EVERY calls while it keeps doing so.
NONE_WARNING_FRACTION = 0.5
NONE_WARNING_EVERY = 50
_WARN_ON_NONE = contextvars.ContextVar("grpo_r1_warn_on_none", default=True)


@contextlib.contextmanager
def none_warnings_off() -> Any:
    """Within this block guarded rewards do not log the mostly-None warning (the caller reports it)."""
    token = _WARN_ON_NONE.set(False)
    try:
        yield
    finally:
        _WARN_ON_NONE.reset(token)


def guard_reward(func: RewardFunc, name: str | None = None, *, timeout_s: float | None = None,
                 setting: str = "timeout_s") -> RewardFunc:
    """Wrap a reward so misbehaviour stops the run with a RewardError instead of a silent zero.

    With `timeout_s` > 0 (the recipe's `rewards[i].timeout_s`; None: an already guarded reward's own
    limit, else none), a call that takes longer raises
    RewardError naming the reward, the step, the first completion and the setting. The call runs in
    a daemon thread (TRL may itself call rewards from a thread, where no signal-based timeout can
    work); on expiry that thread is abandoned, and it never keeps the process alive. An async
    reward is awaited with the same limit. `setting` is the recipe key the message names.

    The wrapper has ``__name__`` ``name`` (default: the function's own), so TRL logs it under that
    name. It raises RewardError, naming the reward, the completion's index and an excerpt of it,
    when the reward raises, returns something other than one value per completion, or returns a
    value that is not a number or None, or is NaN or infinite. It returns the values as a list of
    floats and Nones. Async rewards get an async wrapper.

    Each call also logs, through TRL's ``log_metric``, ``rewards/<name>/paid_frac``: the share of
    the judged completions it paid more than 0 (for a correctness reward, the accuracy).
    A reward that returns None ("cannot judge") for most completions of a call is logged as a
    warning naming the reward, the step and a row it skipped: a correctness reward whose gold
    column holds no readable answer would otherwise teach nothing, silently.
    """
    guarded_already = getattr(func, _GUARDED, False)
    if timeout_s is None:
        timeout_s = getattr(func, _TIMEOUT) if guarded_already else 0.0
    if not (isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool) and 0 <= timeout_s < math.inf):
        raise RewardError(f"reward {name or func!r}: timeout_s must be a number of seconds >= 0 (0: no limit), "
                          f"got {timeout_s!r}")
    if guarded_already:
        if (name is None or func.__name__ == name) and getattr(func, _TIMEOUT) == timeout_s:
            return func
        func = func.__wrapped__  # re-guard under the new name or limit, not twice
    name = name or getattr(func, "__name__", type(func).__name__)
    watch = _NoneWatch(name)

    if _is_async(func):

        async def guarded(*args: Any, **kwargs: Any) -> list[float | None]:
            completions = _completions_of(name, args, kwargs)
            limit = asyncio.timeout(timeout_s or None)
            try:
                async with limit:
                    output = await func(*args, **kwargs)
            except TimeoutError as exc:
                if not limit.expired():  # the reward's own TimeoutError
                    raise _raised_error(name, exc, None, completions) from exc
                raise _timeout_error(name, timeout_s, setting, completions, kwargs) from None
            except Exception as exc:
                raise _raised_error(name, exc, None, completions) from exc
            return watch(_checked_output(name, output, completions), kwargs)

    else:

        def guarded(*args: Any, **kwargs: Any) -> list[float | None]:  # type: ignore[misc]
            completions = _completions_of(name, args, kwargs)
            try:
                output = _call_within(func, args, kwargs, timeout_s) if timeout_s else func(*args, **kwargs)
            except _Expired:
                raise _timeout_error(name, timeout_s, setting, completions, kwargs) from None
            except Exception as exc:
                index = None if args else _failing_index(func, kwargs)
                raise _raised_error(name, exc, index, completions) from exc
            return watch(_checked_output(name, output, completions), kwargs)

    functools.update_wrapper(guarded, func)
    guarded.__name__ = name
    guarded.__qualname__ = name
    setattr(guarded, _GUARDED, True)
    setattr(guarded, _TIMEOUT, timeout_s)
    return guarded


class _Expired(Exception):
    """A reward call ran past its time limit."""


def _call_within(func: RewardFunc, args: tuple[Any, ...], kwargs: Mapping[str, Any], timeout_s: float) -> Any:
    """func(*args, **kwargs) in a daemon thread (with the caller's context variables); its result or its
    exception, or _Expired after `timeout_s` seconds, leaving the thread to run on unobserved."""
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def call() -> None:
        try:
            outcome["value"] = context.run(func, *args, **kwargs)
        except BaseException as exc:  # handed to the caller, which re-raises it
            outcome["error"] = exc

    worker = threading.Thread(target=call, name=f"reward {getattr(func, '__name__', func)!s}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _Expired
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _timeout_error(name: str, timeout_s: float, setting: str, completions: Sequence[Any],
                   columns: Mapping[str, Any]) -> RewardError:
    state = columns.get("trainer_state")
    step = f" at step {state.global_step + 1}" if getattr(state, "max_steps", 0) > 0 else ""
    first = f"; the first of its {len(completions)} completions: {_completion_excerpt(completions, 0)}" if (
        completions) else ""
    return RewardError(
        f"reward {name!r} did not return within {timeout_s:g} s{step}{first}. If it is slow rather than stuck, "
        f"raise its limit ({setting}={max(2 * timeout_s, 120):g}; 0: no limit); "
        "if it waits on a service or runs generated code, give that call its own timeout"
    )


class _NoneWatch:
    """Warns when one reward's calls skip (None) most of their completions."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls_since_warning: int | None = None  # None: never warned

    def __call__(self, values: list[float | None], columns: Mapping[str, Any]) -> list[float | None]:
        if self.calls_since_warning is not None:
            self.calls_since_warning += 1
        judged = [value for value in values if value is not None]
        log_metric = columns.get("log_metric")
        if judged and callable(log_metric):  # TRL averages it over the logging step: the console's "correct"
            log_metric(f"rewards/{self.name}/paid_frac", sum(value > 0 for value in judged) / len(judged))
        skipped = [index for index, value in enumerate(values) if value is None]
        mostly_skipped = len(values) >= 2 and len(skipped) > NONE_WARNING_FRACTION * len(values)
        due = self.calls_since_warning is None or self.calls_since_warning >= NONE_WARNING_EVERY
        if mostly_skipped and due and _WARN_ON_NONE.get():
            self.calls_since_warning = 0
            logger.warning("reward %r %s", self.name, none_warning(len(skipped), len(values), columns, skipped[0]))
        return values


def none_warning(skipped: int, count: int, columns: Mapping[str, Any], index: int) -> str:
    """The warning for a reward that skipped `skipped` of `count` completions, showing row `index`'s gold."""
    state = columns.get("trainer_state")
    training = getattr(state, "max_steps", 0) > 0  # a fresh TrainerState (rewards check) has none
    step = f" at step {state.global_step + 1}" if training else ""
    answers = columns.get("answer")
    gold = f"; the 'answer' column of a skipped row holds {excerpt(str(answers[index]), 60)}" if (
        isinstance(answers, Sequence) and not isinstance(answers, str) and index < len(answers)) else ""
    return (f"returned None (cannot judge) for {skipped} of {count} completions{step}{gold}; "
            "they count for nothing. For the built-in correctness rewards the gold must state one answer "
            "('72', '-3', '1/2', or GSM8K's '... #### 72'): check data.answer_column; for your own reward, "
            "None is meant for rows it cannot score")


def _is_async(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    # A callable class instance carries its "async" on the class's __call__.
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


def _completions_of(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Sequence[Any]:
    """The completions a reward was called with: TRL passes them by keyword, people sometimes by position."""
    completions = kwargs["completions"] if "completions" in kwargs else args[1] if len(args) > 1 else None
    if not isinstance(completions, Sequence) or isinstance(completions, str):
        raise RewardError(
            f"reward {name!r} must be called with completions=<a list, one item per completion>, as GRPOTrainer "
            f"does; got {type(completions).__name__}"
        )
    return completions


def _checked_output(name: str, output: Any, completions: Sequence[Any]) -> list[float | None]:
    count = len(completions)
    if output is None or isinstance(output, (str, bytes, Mapping)) or not isinstance(output, Iterable):
        raise RewardError(
            f"reward {name!r} returned {type(output).__name__} {output!r:.60}; return a list with one value per "
            "completion: a float, or None to skip that completion"
        )
    values = list(output)
    if len(values) != count:
        raise RewardError(
            f"reward {name!r} returned {len(values)} values for {count} completions; return exactly one value per "
            "completion, in order (a float, or None to skip that completion)"
        )
    checked: list[float | None] = []
    for index, value in enumerate(values):
        if value is None:
            checked.append(None)
            continue
        number = _as_float(value)
        where = f"completion {index} of {count} ({_completion_excerpt(completions, index)})"
        if number is None:
            raise RewardError(
                f"reward {name!r} returned {value!r:.60} ({type(value).__name__}) for {where}; return a float, "
                "or None to skip that completion"
            )
        if not math.isfinite(number):
            raise RewardError(
                f"reward {name!r} returned {number} for {where}; rewards must be finite numbers (return None "
                "to skip a completion on purpose)"
            )
        checked.append(number)
    return checked


def _as_float(value: Any) -> float | None:
    """The value as a float when it is a number (int, float, bool, NumPy or 0-d tensor), else None."""
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _failing_index(func: RewardFunc, kwargs: Mapping[str, Any]) -> int | None:
    """Find which completion makes ``func`` raise by calling it on one completion at a time."""
    completions = kwargs.get("completions")
    if not isinstance(completions, Sequence):
        return None
    count = len(completions)
    if count <= 1:
        return 0 if count == 1 else None
    for index in range(count):
        single = {
            key: value[index : index + 1] if isinstance(value, list) and len(value) == count else value
            for key, value in kwargs.items()
        }
        for key in ("log_extra", "log_metric"):
            if key in single:
                single[key] = ignore
        try:
            func(**single)
        except Exception:
            return index
    return None


def ignore(*args: Any, **kwargs: Any) -> None:
    """Stands in for TRL's log_extra / log_metric where nothing is logged."""


def _raised_error(name: str, exc: Exception, index: int | None, completions: Sequence[Any]) -> RewardError:
    if index is not None:
        where = f" on completion {index} of {len(completions)} ({_completion_excerpt(completions, index)})"
    else:
        where = ""
    return RewardError(
        f"reward {name!r} raised {describe_error(exc)}{where}; "
        f"fix the reward (return None for a completion it cannot score)"
    )


def describe_error(exc: BaseException) -> str:
    """'TypeError: message (at file.py:12 in function)' for the innermost frame of the error."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} (at {exc.filename}:{exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        frame = frames[-1]
        text += f" (at {frame.filename}:{frame.lineno} in {frame.name})"
    return text


def _completion_excerpt(completions: Any, index: int) -> str:
    try:
        return excerpt(completion_text(completions[index]))
    except Exception:
        return excerpt(repr(completions[index]))
