"""What each reward of a recipe pays for, before training (`python -m grpo_r1.rewards check RECIPE.yaml`).

Takes a few real rows of the recipe's dataset, makes sample completions for each (the gold
solution in the target XML layout, a wrong answer, a malformed one without tags, and with
`--generate N` that many completions sampled from the recipe's model), scores them with every
reward of the recipe exactly as the trainer would, and prints reward x sample with mean, std and
None rate, then the sampled completions' texts. A reward that scores every sample the same is
flagged: it gives GRPO no signal.
"""

from __future__ import annotations

from typing import Any

from grpo_r1.data import load_questions
from grpo_r1.recipe import Recipe
from grpo_r1.scoring.loading import load_reward_functions
from grpo_r1.scoring.samples import sample_completions
from grpo_r1.scoring.table import format_reward_table, reward_table


def check_recipe_rewards(recipe: Recipe, rows: int = 2, generate: int = 0) -> str:
    """Score sample completions of `rows` dataset rows with the recipe's rewards; return the table."""
    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    funcs = load_reward_functions(recipe.rewards, dataset.column_names, base_dir=recipe.base_dir)
    picked = dataset.select(range(min(rows, len(dataset))))
    generated = _generate(recipe, picked["prompt"], generate) if generate else [[] for _ in range(len(picked))]

    labels, prompts, completions = [], [], []
    columns: dict[str, list[Any]] = {name: [] for name in dataset.column_names}
    for index, row in enumerate(picked):
        samples = list(sample_completions(row, recipe.layout).items())
        samples += [(f"gen{k}", text) for k, text in enumerate(generated[index])]
        for label, text in samples:
            labels.append(f"r{index}:{label}")
            prompts.append(row["prompt"])
            completions.append([{"role": "assistant", "content": text}])
            for name in columns:
                columns[name].append(row[name])
    table = reward_table(funcs, prompts, completions, columns)
    legend = "\n".join(f"r{i}: {q[:90]!r} (gold {a})"
                       for i, (q, a) in enumerate(zip(picked["question"], picked["answer"])))
    texts = [f"{label}:\n{_indented(completion[0]['content'])}" for label, completion in zip(labels, completions)
             if ":gen" in label]
    sampled = ("\n\nsampled completions (the base model, at the recipe's temperature):\n" + "\n".join(texts)
               if texts else "")
    return f"{legend}\n\n{format_reward_table(table, labels)}{sampled}"


def _indented(text: str) -> str:
    """A completion under its label: each line indented, an empty one shown as such."""
    return "\n".join("    " + line for line in text.splitlines()) if text.strip() else "    (empty)"


def _generate(recipe: Recipe, prompts: list[list[dict[str, str]]], n: int) -> list[list[str]]:
    """`n` sampled completions per prompt from the recipe's base model (no adapter), as the trainer samples."""
    from grpo_r1.sampling import generate, load_for_generation

    model, tokenizer = load_for_generation(recipe)
    gen = recipe.generation
    outs = generate(model, tokenizer, prompts, max_new_tokens=gen.max_completion_length, num_samples=n, do_sample=True,
                    temperature=gen.temperature, top_p=gen.top_p, seed=recipe.run.seed)
    return [[completion.text for completion in group] for group in outs]
