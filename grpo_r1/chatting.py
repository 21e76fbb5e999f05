"""Try a trained adapter: answer questions in the recipe's prompt format, streamed, with a layout verdict
(the library behind `python -m grpo_r1.chat`).

    session = load_chat("runs/my-run")                    # the run's recipe.yaml and adapter/
    reply = session.reply("What is 2 + 3?", on_text=lambda text: ...)   # streamed piece by piece
    reply.verdict()       # 'strict layout: yes; answer: "5"'
    session.answer("What is 2 + 3?", base=True)           # the base model, the adapter switched off

Questions become prompts exactly as in training: the recipe's `data.system_prompt`, the tokenizer's
chat template with the generation prompt added (`grpo_r1.prompts.build_prompt` and
`tokenize_prompts`, TRL's tokenization). Generation is transformers' `generate` on one sequence,
greedy unless a temperature above 0 is asked for (then with the recipe's `generation.top_p`). The
base model's answer comes from the same PeftModel with the adapter disabled, so both answers see
the same weights but for the LoRA. The verdict judges the answer as the rewards do: the strict
R1 layout (`rewards.format.strict_format_reward` for the recipe's tags) and the answer block
(`rewards.parsing.extract_answer`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TextStreamer

from grpo_r1.errors import ModelError, RecipeError
from grpo_r1.prompts import build_prompt, tokenize_prompts
from grpo_r1.recipe import Recipe, load_recipe
from grpo_r1.run.folder import RECIPE_FILE
from grpo_r1.sampling import ADAPTER_CONFIG, find_adapter_dir, load_for_generation
from rewards.format import strict_format_reward
from rewards.layout import Layout
from rewards.parsing import extract_answer

__all__ = ["ChatSession", "Reply", "find_recipe_file", "layout_verdict", "load_chat"]

logger = logging.getLogger(__name__)

TextCallback = Callable[[str], None]


@dataclass
class Reply:
    """One answer to one question, with what the rewards would see in it."""

    text: str  # decoded without special tokens (what the rewards score)
    num_tokens: int  # generated tokens, the end-of-sequence token included
    truncated: bool  # True when max_new_tokens ran out before an end-of-sequence token
    strict: bool  # the text follows the strict R1 layout (strict_format pays for it)
    answer: str | None  # the answer block's content, None when there is no answer block
    layout: Layout  # the tags it was judged against

    def verdict(self) -> str:
        """One line: whether the layout is strict (what is wrong with it when not) and what the answer block says."""
        return layout_verdict(self.text, self.layout, strict=self.strict, answer=self.answer,
                              cut_off_at=self.num_tokens if self.truncated else None)


def layout_verdict(text: str, layout: Layout, *, strict: bool | None = None, answer: str | None = None,
                   cut_off_at: int | None = None) -> str:
    """One line on a completion's layout: 'strict layout: yes; answer: "5"', or what breaks the layout
    ('strict layout: no (missing </answer>); answer block: none'). `strict` and `answer` are computed
    from `text` when not given; `cut_off_at`: the token count at which generation was cut off."""
    if strict is None:
        strict = strict_format_reward(layout)([""], [text])[0] > 0
    if answer is None:
        answer = extract_answer(text, layout)
    if strict:
        head = "strict layout: yes"
    else:
        missing = [tag for tag in layout.tags if tag not in text]
        repeated = [tag for tag in layout.tags if text.count(tag) > 1]
        if missing:
            why = "no tags" if len(missing) == len(layout.tags) else "missing " + ", ".join(missing)
        elif repeated:
            why = "repeated " + ", ".join(repeated)
        else:
            why = "tags out of order, not on lines of their own, or text around them"
        head = f"strict layout: no ({why})"
    shown = "none" if answer is None else _quoted(answer)
    tail = f"; cut off at {cut_off_at} tokens" if cut_off_at is not None else ""
    return f"{head}; {'answer' if answer is not None else 'answer block'}: {shown}{tail}"


def find_recipe_file(path: str | Path, adapter_dir: Path) -> Path:
    """The recipe.yaml that goes with an adapter: in the folder given, the adapter folder, or the folder
    holding the adapter folder (a run folder's adapter/). Raises RecipeError naming the fix when none has one."""
    path = Path(path).expanduser()
    candidates = [path, adapter_dir, adapter_dir.parent]
    for folder in dict.fromkeys(candidates):
        if (folder / RECIPE_FILE).is_file():
            return folder / RECIPE_FILE
    raise RecipeError(f"no {RECIPE_FILE} in {str(path)!r} (nor next to its adapter); pass a run folder made by "
                      f"python -m grpo_r1.train, or an adapter folder with --recipe RECIPE.yaml")


def load_chat(
    run_dir: str | Path,
    *,
    recipe: str | Path | Recipe | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
) -> ChatSession:
    """A chat session with the adapter of a run folder (or an adapter folder, or a checkpoint folder).

    The recipe is the run folder's recipe.yaml unless `recipe` names one (a path or a Recipe).
    `max_new_tokens` defaults to the recipe's `generation.max_completion_length`; `temperature`
    0 is greedy decoding. Raises ModelError when the folder is missing or holds no adapter,
    RecipeError when no recipe goes with it.
    """
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise ModelError(f"run folder {str(path)!r} does not exist; pass a run folder (runs/<name>) "
                         f"made by python -m grpo_r1.train, or an adapter folder")
    adapter_dir = _adapter_dir(path)
    if isinstance(recipe, Recipe):
        loaded = recipe
    else:
        loaded = load_recipe(Path(recipe) if recipe is not None else find_recipe_file(path, adapter_dir))
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be 0 (greedy) or more, got {temperature}")
    logger.info("loading %s with the adapter %s", loaded.model.name_or_path, adapter_dir)
    model, tokenizer = load_for_generation(loaded, adapter_dir)
    return ChatSession(recipe=loaded, model=model, tokenizer=tokenizer, adapter_dir=adapter_dir,
                       max_new_tokens=max_new_tokens or loaded.generation.max_completion_length,
                       temperature=temperature, seed=loaded.run.seed if seed is None else seed)


def _adapter_dir(path: Path) -> Path:
    """find_adapter_dir, with the run's newest checkpoint suggested when the run has no final adapter yet."""
    try:
        return find_adapter_dir(path)
    except ModelError:
        checkpoints = sorted((p.parent for p in path.glob(f"checkpoints/checkpoint-*/{ADAPTER_CONFIG}")),
                             key=lambda p: int(p.name.rpartition("-")[2]) if p.name.rpartition("-")[2].isdigit()
                             else -1)
        if checkpoints:
            raise ModelError(f"{str(path)!r} has no final adapter/ yet (the run has not finished); "
                             f"pass one of its checkpoints, e.g. {str(checkpoints[-1])!r}") from None
        raise


@dataclass
class ChatSession:
    """A loaded PeftModel and its tokenizer, answering questions in the recipe's prompt format."""

    recipe: Recipe
    model: Any  # peft.PeftModel, in eval mode
    tokenizer: Any
    adapter_dir: Path
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    seed: int = 0  # the sampling seed, set before each sampled answer (temperature > 0)

    @property
    def layout(self) -> Layout:
        """The recipe's answer layout (its tags)."""
        return self.recipe.layout

    def prompt_ids(self, question: str) -> list[int]:
        """The question's prompt as the trainer tokenizes it: system prompt, chat template, generation prompt."""
        messages = build_prompt(question, self.recipe.data.system_prompt)
        return tokenize_prompts(self.tokenizer, [messages],
                                chat_template_kwargs=self.recipe.training.get("chat_template_kwargs"))[0]

    def reply(self, question: str, *, base: bool = False, on_text: TextCallback | None = None,
              max_new_tokens: int | None = None, temperature: float | None = None) -> Reply:
        """Answer one question with the adapter (or, `base`, with the adapter disabled), handing the text
        to `on_text` piece by piece as it is generated (whole words; the pieces join to `Reply.text`)."""
        import torch

        from grpo_r1.sampling import generation_config

        temperature = self.temperature if temperature is None else temperature
        sampling = temperature > 0
        config, stop_ids = generation_config(self.model, self.tokenizer,
                                             max_new_tokens=max_new_tokens or self.max_new_tokens,
                                             temperature=temperature, top_p=self.recipe.generation.top_p)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([self.prompt_ids(question)], device=device)
        streamer = _CallbackStreamer(self.tokenizer, on_text) if on_text is not None else None
        if sampling:
            torch.manual_seed(self.seed)
        with self.model.disable_adapter() if base else contextlib.nullcontext(), torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      generation_config=config, streamer=streamer)
        generated = out[0, input_ids.shape[1]:].tolist()
        end = next((i for i, token in enumerate(generated) if token in stop_ids), None)
        kept = generated if end is None else generated[:end + 1]
        text = self.tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        strict = strict_format_reward(self.layout)([question], [text])[0] > 0
        return Reply(text=text, num_tokens=len(kept), truncated=end is None, strict=strict,
                     answer=extract_answer(text, self.layout), layout=self.layout)

    def answer(self, question: str, *, base: bool = False, on_text: TextCallback | None = None) -> str:
        """The text of `reply(question, base=base, on_text=on_text)`."""
        return self.reply(question, base=base, on_text=on_text).text


class _CallbackStreamer(TextStreamer):
    """transformers' TextStreamer handing each finished piece of text to a callback instead of printing it."""

    def __init__(self, tokenizer: Any, on_text: TextCallback) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


def _quoted(text: str, limit: int = 80) -> str:
    """The text on one line, quoted, cut to `limit` characters."""
    one_line = " ".join(text.split())
    return '"' + (one_line if len(one_line) <= limit else one_line[:limit - 3] + "...") + '"'
