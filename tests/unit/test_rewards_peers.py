"""Our built-in rewards against the recorded scores of peer reward functions (``reward_peer_cases``).

Each peer is compared with its counterpart here:

- open-r1 / TRL ``accuracy_reward`` (1.0 / 0.0 / None) -> ``math_correctness`` (2.0 / 0.0 / None), and TRL
  ``reasoning_accuracy_reward`` -> ``math_correctness_reward({"reasoning": "think"})``: the verdict is
  compared (pays / pays nothing / None);
- gist ``correctness_reward_func`` (v1, v2) -> ``gsm8k_correctness``: the verdict;
- gist ``int_reward_func``, ``strict_format_reward_func``, ``soft_format_reward_func``, ``xmlcount_reward_func``
  -> ``int_answer``, ``strict_format``, ``soft_format``, ``xml_count``: the values (same scale);
- open-r1 ``format_reward`` -> ``strict_format`` with ``<think>`` tags, TRL ``think_format_reward`` ->
  ``soft_format`` with ``<think>`` tags (peer 1.0 = our 0.5), open-r1 ``tag_count_reward`` -> ``xml_count`` with
  ``<think>`` tags (peer 0.25 per tag = our 0.125): the values, ours doubled.

open-r1 ``reasoning_steps_reward`` has no counterpart among our rewards; its cases are left out.

A case passes when ours agrees with the peer. Otherwise exactly one entry of ``DEPARTURES`` must explain it: a
deliberate, documented difference, recognised by a predicate on the case's input alone (completion and gold,
read with the small helpers below, never with our reward code) and by the direction ours is allowed to differ
in. A disagreement no departure explains fails, and so does a departure that explains no case.
"""

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pytest

from rewards.correctness import gsm8k_correctness_reward
from rewards.format import int_answer_reward, soft_format_reward, strict_format_reward, xml_count_reward
from rewards.mathverify import math_correctness_reward
from tests.unit.reward_peer_cases import CASES, RUN_COMPLETIONS, PeerCase

THINK = {"reasoning": "think"}

OR_ACC = "open-r1 accuracy_reward"
TRL_ACC = "trl accuracy_reward"
TRL_REASONING_ACC = "trl reasoning_accuracy_reward"
GIST_CORRECT = ("gist v1 correctness_reward_func", "gist v2 correctness_reward_func")
GIST_INT = ("gist v1 int_reward_func", "gist v2 int_reward_func")
GIST_XMLCOUNT = ("gist v1 xmlcount_reward_func", "gist v2 xmlcount_reward_func")
GIST_V1_STRICT, GIST_V2_STRICT = "gist v1 strict_format_reward_func", "gist v2 strict_format_reward_func"
GIST_V1_SOFT, GIST_V2_SOFT = "gist v1 soft_format_reward_func", "gist v2 soft_format_reward_func"
OR_FORMAT, OR_TAG_COUNT = "open-r1 format_reward", "open-r1 tag_count_reward"
TRL_THINK_FORMAT = "trl think_format_reward"
LEFT_OUT = ("open-r1 reasoning_steps_reward",)


@dataclass(frozen=True)
class Counterpart:
    reward: Callable[..., list[float | None]]
    verdict: bool  # compare pays / pays nothing / None, not values
    scale: float = 1.0  # our score divided by this is on the peer's scale


_MATH, _MATH_THINK = math_correctness_reward(), math_correctness_reward(THINK)
_GSM8K = gsm8k_correctness_reward()
COUNTERPARTS: dict[str, Counterpart] = {
    OR_ACC: Counterpart(_MATH, verdict=True),
    TRL_ACC: Counterpart(_MATH, verdict=True),
    TRL_REASONING_ACC: Counterpart(_MATH_THINK, verdict=True),
    **{key: Counterpart(_GSM8K, verdict=True) for key in GIST_CORRECT},
    **{key: Counterpart(int_answer_reward(), verdict=False) for key in GIST_INT},
    GIST_V1_STRICT: Counterpart(strict_format_reward(), verdict=False),
    GIST_V2_STRICT: Counterpart(strict_format_reward(), verdict=False),
    GIST_V1_SOFT: Counterpart(soft_format_reward(), verdict=False),
    GIST_V2_SOFT: Counterpart(soft_format_reward(), verdict=False),
    **{key: Counterpart(xml_count_reward(), verdict=False) for key in GIST_XMLCOUNT},
    OR_FORMAT: Counterpart(strict_format_reward(THINK), verdict=False, scale=0.5),
    TRL_THINK_FORMAT: Counterpart(soft_format_reward(THINK), verdict=False, scale=0.5),
    OR_TAG_COUNT: Counterpart(xml_count_reward(THINK), verdict=False, scale=0.5),
}


def peer_key(case: PeerCase) -> str:
    """'trl 1.14.2 accuracy_reward (tests/test_rewards.py)' -> 'trl accuracy_reward'."""
    return case.peer.split(" (")[0].replace("trl 1.14.2 ", "trl ")


# --- reading the input, independently of rewards/ -------------------------------------------------------------------

_NUMBER = re.compile(r"\\frac\{(-?\d+)\}\{(\d+)\}|(?<![\w.])-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
_LATEX_SPAN = re.compile(r"(?<!\\)\$(.+?)(?<!\\)\$", re.DOTALL)
_LATEX = re.compile(r"(?<!\\)\$.+?(?<!\\)\$|\\\(|\\\[|\\[A-Za-z]+", re.DOTALL)


def last_value(text: str | None) -> Fraction | None:
    """The last number (or \\frac{a}{b}) written in ``text``: '1,000' -> 1000, '.5' -> 1/2, '72.0' -> 72."""
    matches = list(_NUMBER.finditer(text or ""))
    if not matches:
        return None
    last = matches[-1]
    if last.group(1) is not None:
        return Fraction(int(last.group(1)), int(last.group(2)))
    written = last.group().replace(",", "").rstrip(".")
    return Fraction(written) if written.strip("-") else None


def answer_block(text: str) -> str | None:
    """The stripped text between the last <answer> and the next </answer> (or the end); None with no <answer>."""
    start = text.rfind("<answer>")
    if start < 0:
        return None
    return text[start + len("<answer>") :].split("</answer>", 1)[0].strip()


def after_answer_close(text: str) -> str | None:
    """What follows the last </answer>; None when there is none."""
    end = text.rfind("</answer>")
    return None if end < 0 else text[end + len("</answer>") :]


def block_content(text: str, tag: str) -> str | None:
    """The raw text between the first <tag> and the next </tag>, or None."""
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return match.group(1) if match else None


def gold_is_words(case: PeerCase) -> bool:
    gold = case.gold
    return gold is not None and not re.search(r"\d", gold) and re.search(r"[A-Za-z]{2}", gold) is not None


def states_gold(text: str | None, case: PeerCase) -> bool:
    """The last number ``text`` writes equals the gold's (so ours paying it pays a right answer)."""
    gold = last_value(case.gold)
    return gold is not None and last_value(text) == gold


def peer_graded_text(case: PeerCase) -> str | None:
    """What the peer grades: the text after the last </think> for TRL reasoning_accuracy, else everything."""
    if peer_key(case) == TRL_REASONING_ACC:
        end = case.completion.rfind("</think>")
        return None if end < 0 else case.completion[end + len("</think>") :]
    return case.completion


def plain_text_answer(case: PeerCase) -> bool:
    graded = peer_graded_text(case)
    return graded is not None and not _LATEX.search(graded) and states_gold(graded, case)


def last_latex_is_wrong_number(case: PeerCase) -> bool:
    spans = [span.strip() for span in _LATEX_SPAN.findall(case.completion)]
    return len(spans) >= 2 and re.fullmatch(r"-?\d+", spans[-1]) is not None and spans[-1] != case.gold.strip()


def latex_equation_ends_in_gold(case: PeerCase) -> bool:
    spans = _LATEX_SPAN.findall(case.completion)
    return any("=" in span and span.rsplit("=", 1)[1].strip() == case.gold.strip() for span in spans)


def latex_currency_sign(case: PeerCase) -> bool:
    return re.search(r"\\\$\s*" + re.escape(case.gold.strip()) + r"(?!\d)", case.completion) is not None


def no_think_close(case: PeerCase) -> bool:
    return "</think>" not in case.completion and states_gold(case.completion, case)


def answer_only_inside_think(case: PeerCase) -> bool:
    head, close, tail = case.completion.rpartition("</think>")
    gold = last_value(case.gold)
    return bool(close) and not re.search(r"\d", tail) and "\\boxed{" in head and last_value(head) == gold


def value_equal_string_differs(case: PeerCase) -> bool:
    block = answer_block(case.completion)
    return block is not None and block != case.gold.strip() and states_gold(block, case)


def no_answer_tag(case: PeerCase) -> bool:
    return "<answer>" not in case.completion


def negative_integer_answer(case: PeerCase) -> bool:
    return re.fullmatch(r"-\d+", answer_block(case.completion) or "") is not None


def text_after_answer(case: PeerCase) -> bool:
    return bool((after_answer_close(case.completion) or "").strip())


def only_whitespace_after_answer(case: PeerCase) -> bool:
    rest = after_answer_close(case.completion)
    return bool(rest) and not rest.strip()


def ends_at_answer_close(case: PeerCase) -> bool:
    return case.completion.endswith("</answer>")


def unclosed_answer(case: PeerCase) -> bool:
    return "<answer>" in case.completion and "</answer>" not in case.completion


def reasoning_spans_lines(case: PeerCase) -> bool:
    match = re.search(r"<reasoning>\n(.*?)\n</reasoning>", case.completion, re.DOTALL)
    return match is not None and "\n" in match.group(1)


def newline_inside_tag_pair(case: PeerCase) -> bool:
    return any("\n" in (block_content(case.completion, tag) or "") for tag in ("reasoning", "answer"))


def two_answer_blocks(case: PeerCase) -> bool:
    return case.completion.count("<answer>") >= 2


def leading_whitespace(case: PeerCase) -> bool:
    return case.completion[:1].isspace() and case.completion.lstrip().startswith("<reasoning>")


# --- departures -----------------------------------------------------------------------------------------------------

OURS_PAYS, OURS_ZERO, OURS_NONE, OURS_HIGHER, OURS_LOWER = "ours pays", "ours 0", "ours None", "higher", "lower"


@dataclass(frozen=True)
class Departure:
    id: str
    peers: tuple[str, ...]
    applies: Callable[[PeerCase], bool]  # on the case's input only
    direction: str  # how ours may differ: OURS_PAYS, OURS_ZERO, OURS_NONE, OURS_HIGHER, OURS_LOWER
    reason: str


ACCURACY = (OR_ACC, TRL_ACC)
DEPARTURES: list[Departure] = [
    Departure(
        "plain-text-answer", (*ACCURACY, TRL_REASONING_ACC), plain_text_answer, OURS_PAYS,
        "the right number written as plain text (no $...$, \\(...\\), \\boxed): the peers only read LaTeX",
    ),
    Departure(
        "peers-grade-first-latex", ACCURACY, last_latex_is_wrong_number, OURS_ZERO,
        "'The answer to $17 - 15$ is $3$.' (gold 2) commits to 3; the peers grade the first LaTeX and pay",
    ),
    Departure(
        "latex-equation-result", ACCURACY, latex_equation_ends_in_gold, OURS_PAYS,
        "'$3 + 69 = 72$' states the result 72; the peers compare the whole equation with the gold",
    ),
    Departure(
        "latex-currency-sign", ACCURACY, latex_currency_sign, OURS_PAYS,
        "'$\\$72$' is 72 dollars: the currency sign is dressing, the peers fail to read it",
    ),
    Departure(
        "no-think-close", (TRL_REASONING_ACC,), no_think_close, OURS_PAYS,
        "without </think> TRL pays nothing; ours grades the answer block (or the text) whatever the reasoning tags",
    ),
    Departure(
        "answer-only-inside-think", (TRL_REASONING_ACC,), answer_only_inside_think, OURS_PAYS,
        "no answer after </think>: ours has no reasoning-tag rule and reads the last \\boxed{} of the whole text",
    ),
    Departure(
        "gold-is-words", (*ACCURACY, TRL_REASONING_ACC, *GIST_CORRECT), gold_is_words, OURS_NONE,
        "a gold in words ('forty two') states no value: ours skips rather than match strings or symbols",
    ),
    Departure(
        "value-equal-string-differs", GIST_CORRECT, value_equal_string_differs, OURS_PAYS,
        "'72.0', '$72', '72 apples', 'x = 72', '1,000' state the gold's value; the gist compares strings",
    ),
    Departure(
        "no-answer-block", (*GIST_CORRECT, *GIST_INT), no_answer_tag, OURS_ZERO,
        "no <answer> block: ours reads nothing; the gist read the whole completion, paying a bare '72'",
    ),
    Departure(
        "negative-integer", GIST_INT, negative_integer_answer, OURS_PAYS,
        "'-5' is an integer; the gist's digit test refuses the sign",
    ),
    Departure(
        "think-format-needs-answer", (TRL_THINK_FORMAT,), no_answer_tag, OURS_ZERO,
        "soft_format scores reasoning then answer; TRL's think format pays a think block with no <answer>",
    ),
    Departure(
        "trailing-text-not-strict", (OR_FORMAT,), text_after_answer, OURS_ZERO,
        "strict means nothing but whitespace after </answer>; open-r1's multi-line '$' lets prose follow",
    ),
    Departure(
        "trailing-text-charged", (OR_TAG_COUNT,), text_after_answer, OURS_LOWER,
        "xml_count keeps the seed's 0.001 per character after </answer>; open-r1's tag count has no charge",
    ),
    Departure(
        "trailing-text-charged-once", GIST_XMLCOUNT, text_after_answer, OURS_HIGHER,
        "ours charges the text after </answer> once; the gist charges it twice",
    ),
    Departure(
        "trailing-whitespace-free", GIST_XMLCOUNT, only_whitespace_after_answer, OURS_HIGHER,
        "blank lines after </answer> cost nothing in ours; the gist charges each newline",
    ),
    Departure(
        "ends-at-answer-close", (GIST_V2_STRICT, *GIST_XMLCOUNT), ends_at_answer_close, OURS_HIGHER,
        "a model that stops at </answer> is well formed; the gist wants '\\n' after it (xmlcount: charges all text)",
    ),
    Departure(
        "unclosed-answer", GIST_XMLCOUNT, unclosed_answer, OURS_HIGHER,
        "a cut-off answer earns its tags; the gist charges the whole completion's length",
    ),
    Departure(
        "v1-multiline-reasoning", (GIST_V1_STRICT,), reasoning_spans_lines, OURS_PAYS,
        "v1 strict has no DOTALL: reasoning that spans lines (any real one) never matches; v2 fixed it",
    ),
    Departure(
        "v1-newline-in-tags", (GIST_V1_SOFT,), newline_inside_tag_pair, OURS_PAYS,
        "v1 soft has no DOTALL: a newline inside the tags, the R1 layout itself, never matches; v2 fixed it",
    ),
    Departure(
        "two-answer-blocks", (GIST_V2_STRICT,), two_answer_blocks, OURS_ZERO,
        "strict means each tag once; the gist's pattern stretches one answer block over two",
    ),
    Departure(
        "leading-whitespace", (GIST_V2_SOFT,), leading_whitespace, OURS_PAYS,
        "soft_format allows whitespace before <reasoning>; the gist requires the tag at the very start",
    ),
]


# --- comparing ------------------------------------------------------------------------------------------------------


def our_score(case: PeerCase) -> float | None:
    counterpart = COUNTERPARTS[peer_key(case)]
    columns: dict[str, Any] = {"answer": [case.gold]} if case.kind == "correctness" else {}
    return counterpart.reward(prompts=[""], completions=[case.completion], **columns)[0]


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, abs_tol=1e-9)


def agrees(case: PeerCase, ours: float | None) -> bool:
    peer, counterpart = case.peer_score, COUNTERPARTS[peer_key(case)]
    if peer is None or ours is None:
        return peer is None and ours is None
    if counterpart.verdict:
        return (ours > 0) == (peer > 0)
    return _same(ours / counterpart.scale, peer)


def goes(direction: str, case: PeerCase, ours: float | None) -> bool:
    """True when ours differs from the peer in ``direction``."""
    peer = case.peer_score
    if direction == OURS_NONE:
        return ours is None and peer is not None
    if ours is None or peer is None:
        return False
    ours = ours / COUNTERPARTS[peer_key(case)].scale
    return {
        OURS_PAYS: ours > 0 and _same(peer, 0.0),
        OURS_ZERO: _same(ours, 0.0) and peer > 0,
        OURS_HIGHER: ours > peer + 1e-9,
        OURS_LOWER: ours < peer - 1e-9,
    }[direction]


def explaining(case: PeerCase, ours: float | None) -> list[str]:
    """The departures that explain this case's disagreement."""
    key = peer_key(case)
    return [d.id for d in DEPARTURES if key in d.peers and d.applies(case) and goes(d.direction, case, ours)]


MAPPED = [case for case in CASES if peer_key(case) in COUNTERPARTS]


@functools.cache
def outcome(index: int) -> tuple[float | None, tuple[str, ...]]:
    """Our score for MAPPED[index] and the departures explaining it (empty when ours agrees)."""
    case = MAPPED[index]
    ours = our_score(case)
    return ours, () if agrees(case, ours) else tuple(explaining(case, ours))


def _case_id(index: int, case: PeerCase) -> str:
    """'012-gist v1 xmlcount_reward_func-...70 + 2 = 72.|</reasoning>|<answer>|72|</answer>' ("|" is a newline)."""
    text = case.completion.replace("\n", "|")
    excerpt = text if len(text) <= 40 else ("..." + text[-37:] if "<answer>" in text else text[:37] + "...")
    gold = f"-gold={case.gold[:20]}" if case.gold is not None else ""
    return f"{index:03d}-{peer_key(case)}-{excerpt}{gold}"


def describe(case: PeerCase, ours: float | None) -> str:
    text = case.completion[:90]
    return f"{peer_key(case)}: completion {text!r}, gold {case.gold!r}: peer {case.peer_score}, ours {ours}"


# --- tests ----------------------------------------------------------------------------------------------------------


def test_every_peer_is_mapped_or_left_out() -> None:
    keys = {peer_key(case) for case in CASES}
    assert keys - set(COUNTERPARTS) == set(LEFT_OUT)
    assert set(COUNTERPARTS) <= keys


@pytest.mark.parametrize("index", range(len(MAPPED)), ids=[_case_id(i, c) for i, c in enumerate(MAPPED)])
def test_ours_agrees_with_peer_or_departs_deliberately(index: int) -> None:
    case = MAPPED[index]
    ours, reasons = outcome(index)
    if agrees(case, ours):
        return
    assert reasons, f"unexplained disagreement: {describe(case, ours)}"
    assert len(reasons) == 1, f"ambiguous: departures {reasons} all explain {describe(case, ours)}"


def test_every_departure_explains_a_case() -> None:
    used = {reason for index in range(len(MAPPED)) for reason in outcome(index)[1]}
    unused = [d.id for d in DEPARTURES if d.id not in used]
    assert not unused, f"departures that explain no recorded case (remove them or fix the predicate): {unused}"


def test_departures_are_well_formed() -> None:
    ids = [d.id for d in DEPARTURES]
    assert len(ids) == len(set(ids))
    for departure in DEPARTURES:
        assert set(departure.peers) <= set(COUNTERPARTS), departure.id
        assert departure.direction in (OURS_PAYS, OURS_ZERO, OURS_NONE, OURS_HIGHER, OURS_LOWER), departure.id
        assert departure.reason and "\n" not in departure.reason, departure.id


def test_all_disagreements_are_explained_per_peer() -> None:
    """One assertion listing every unexplained or ambiguous case, grouped by peer (the summary of the above)."""
    problems: dict[str, list[str]] = {}
    for index, case in enumerate(MAPPED):
        ours, reasons = outcome(index)
        if not agrees(case, ours) and len(reasons) != 1:
            problems.setdefault(peer_key(case), []).append(f"{describe(case, ours)} -> {list(reasons) or 'none'}")
    assert not problems, "\n".join(f"{key}:\n  " + "\n  ".join(rows) for key, rows in problems.items())


# --- the gist's two versions, and ours, on the R1 layout -------------------------------------------------------------

_TRAILING = {
    0: RUN_COMPLETIONS["r1_exact_no_final_newline"],
    1: RUN_COMPLETIONS["r1_exact_final_newline"],
    2: RUN_COMPLETIONS["r1_exact_final_double_newline"],
}


def recorded(peer: str, completion: str) -> float | None:
    scores = {case.peer_score for case in CASES if case.peer == peer and case.completion == completion}
    assert len(scores) == 1, f"expected one recorded score of {peer} for {completion!r}, got {scores}"
    return scores.pop()


def test_gist_versions_differ_as_recorded() -> None:
    multi_line = _TRAILING[1]
    assert "\n" in multi_line.split("<reasoning>\n", 1)[1].split("\n</reasoning>", 1)[0]  # the reasoning spans lines
    # v1 (no DOTALL): strict and soft are 0 on multi-line reasoning; v2 accepts it.
    for peer in (GIST_V1_STRICT, GIST_V1_SOFT):
        assert recorded(peer, multi_line) == 0.0, peer
    for peer in (GIST_V2_STRICT, GIST_V2_SOFT):
        assert recorded(peer, multi_line) == 0.5, peer
    # v1 strict does pass single-line reasoning; v1 soft fails even that (a newline sits inside the tags).
    single_line = RUN_COMPLETIONS["r1_single_line_reasoning"]
    assert recorded(GIST_V1_STRICT, single_line) == 0.5
    assert recorded(GIST_V1_SOFT, single_line) == 0.0
    # v2 strict accepts "\n" and "\n\n" after </answer>, not the end of the text right after it.
    assert recorded(GIST_V2_STRICT, _TRAILING[1]) == 0.5
    assert recorded(GIST_V2_STRICT, _TRAILING[2]) == 0.5
    assert recorded(GIST_V2_STRICT, _TRAILING[0]) == 0.0
    # v2 soft does not look at the end.
    for newlines in _TRAILING:
        assert recorded(GIST_V2_SOFT, _TRAILING[newlines]) == 0.5


@pytest.mark.parametrize("newlines", sorted(_TRAILING))
def test_ours_pays_the_multi_line_layout_with_any_trailing_newlines(newlines: int) -> None:
    completion = _TRAILING[newlines]
    assert completion.endswith("</answer>" + "\n" * newlines)
    for factory in (strict_format_reward, soft_format_reward, xml_count_reward):
        assert factory()(prompts=[""], completions=[completion]) == [0.5], factory.__name__
    assert int_answer_reward()(prompts=[""], completions=[completion]) == [0.5]
    assert _GSM8K(prompts=[""], completions=[completion], answer=["72"]) == [2.0]
