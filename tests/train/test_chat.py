"""`python -m grpo_r1.chat` on the real SmolLM2 with an adapter whose LoRA weights are not zero
(so the adapter's greedy answers differ from the base model's), and its bad-input errors."""

from __future__ import annotations

import io
import shutil

import pytest
import yaml

from grpo_r1 import chat
from tests.helpers import CPU_RECIPE, lora_model, smollm2_folder

QUESTIONS = ["What is 2 + 3?", "Tom has 4 apples and buys 5 more. How many apples does he have?"]
TOKENS = "16"  # keeps each answer to about a second on one core


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as training leaves it: recipe.yaml (the CPU recipe, every default filled in) and
    adapter/, a LoRA on SmolLM2 with small random B weights (a fresh LoRA's B is zero: no change)."""
    import torch

    from grpo_r1.recipe import load_recipe

    path = smollm2_folder()
    run = tmp_path_factory.mktemp("chat") / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(load_recipe(CPU_RECIPE).to_dict(), sort_keys=False))
    model = lora_model(path, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(run / "adapter")
    return run


@pytest.fixture(scope="module")
def session(run_dir):
    from grpo_r1.chatting import load_chat

    return load_chat(run_dir, max_new_tokens=int(TOKENS))


def test_the_adapter_answers_differ_from_the_base_and_stream(session):
    adapter, base = [], []
    for question in QUESTIONS:
        pieces: list[str] = []
        reply = session.reply(question, on_text=pieces.append)
        assert len(pieces) > 1 and "".join(pieces) == reply.text  # streamed piece by piece, nothing lost
        assert 0 < reply.num_tokens <= int(TOKENS)
        adapter.append(reply.text)
        base.append(session.answer(question, base=True))
    assert adapter != base, "the adapter's greedy answers equal the base model's: the adapter was not used"
    # Greedy and repeatable; the adapter is back on after the base model's answer.
    assert session.answer(QUESTIONS[0]) == adapter[0]


def test_the_prompt_is_the_trainers(session):
    from grpo_r1.prompts import build_prompt, tokenize_prompts

    messages = build_prompt(QUESTIONS[0], session.recipe.data.system_prompt)
    assert session.prompt_ids(QUESTIONS[0]) == tokenize_prompts(session.tokenizer, [messages])[0]
    text = session.tokenizer.decode(session.prompt_ids(QUESTIONS[0]))
    assert "<reasoning>" in text and QUESTIONS[0] in text  # the R1 system prompt and the question


def test_layout_verdicts():
    from grpo_r1.chatting import layout_verdict
    from rewards.layout import R1, Layout

    assert layout_verdict(R1.text("2 + 3 = 5", "5"), R1) == 'strict layout: yes; answer: "5"'
    assert layout_verdict("<answer>\n5", R1, cut_off_at=16) == (
        'strict layout: no (missing <reasoning>, </reasoning>, </answer>); answer: "5"; cut off at 16 tokens')
    assert layout_verdict("It is 5.", R1) == "strict layout: no (no tags); answer block: none"
    think = Layout(reasoning="think")
    assert layout_verdict(think.text("...", "7"), think) == 'strict layout: yes; answer: "7"'
    assert layout_verdict(think.text("...", "7"), R1).startswith("strict layout: no (missing <reasoning>")


def test_one_question(run_dir, capsys):
    assert chat.main([str(run_dir), "--question", "What is 2 + 3?", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("question: What is 2 + 3?\nadapter: ")
    assert out.count("adapter: ") == 1 and "base: " not in out
    assert out.count("adapter verdict: strict layout: ") == 1


def test_base_answers_are_shown_labelled_for_each_question(run_dir, tmp_path, capsys):
    """Two --question, --base; and an adapter folder of its own with --recipe."""
    adapter = shutil.copytree(run_dir / "adapter", tmp_path / "my-adapter")
    argv = [str(adapter), "--recipe", str(run_dir / "recipe.yaml"), "--base", "--max-new-tokens", TOKENS]
    assert chat.main(argv + ["-q", QUESTIONS[0], "-q", QUESTIONS[1]]) == 0
    out = capsys.readouterr().out
    blocks = out.split("question: ")[1:]
    assert [block.splitlines()[0] for block in blocks] == QUESTIONS
    answers = {"adapter": [], "base": []}
    for block in blocks:
        assert block.index("adapter: ") < block.index("adapter verdict: ") < block.index("base: ") \
            < block.index("base verdict: ")
        for label in answers:
            start = block.index(f"{label}: ") + len(label) + 2
            answers[label].append(block[start:block.index(f"{label} verdict: ")].strip())
    assert answers["adapter"] != answers["base"]


def test_interactive_reads_questions_until_an_empty_line(run_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTIONS[0]}\n\n{QUESTIONS[1]}\n"))
    assert chat.main([str(run_dir), "--max-new-tokens", TOKENS]) == 0
    out = capsys.readouterr().out
    assert out.count("adapter: ") == 1 and out.count("adapter verdict: ") == 1  # stopped at the empty line

    monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTIONS[0]}\n{QUESTIONS[1]}\n"))  # then end of input
    assert chat.main([str(run_dir), "--max-new-tokens", TOKENS]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("question: ")] == [f"question: {q}" for q in QUESTIONS]
    assert out.count("adapter: ") == 2 and out.count("adapter verdict: ") == 2


def test_exit_ends_the_questions(run_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("exit\nWhat is 2 + 3?\n"))
    assert chat.main([str(run_dir), "--max-new-tokens", TOKENS]) == 0
    assert "adapter: " not in capsys.readouterr().out


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_missing_run_folder(tmp_path, capsys):
    assert chat.main([str(tmp_path / "nope"), "-q", "hi"]) == 2
    line = _error(capsys)
    assert "does not exist" in line and "run folder" in line


def test_a_folder_without_an_adapter(tmp_path, capsys):
    (tmp_path / "recipe.yaml").write_text(CPU_RECIPE.read_text())
    assert chat.main([str(tmp_path), "-q", "hi"]) == 2
    assert "adapter_config.json" in _error(capsys)


def test_a_run_with_only_checkpoints_names_the_newest(run_dir, tmp_path, capsys):
    for step in (10, 20):
        shutil.copytree(run_dir / "adapter", tmp_path / "checkpoints" / f"checkpoint-{step}")
    assert chat.main([str(tmp_path), "-q", "hi"]) == 2
    line = _error(capsys)
    assert "no final adapter/" in line and "checkpoint-20" in line


def test_an_adapter_without_a_recipe(run_dir, tmp_path, capsys):
    adapter = shutil.copytree(run_dir / "adapter", tmp_path / "adapter-only")
    assert chat.main([str(adapter), "-q", "hi"]) == 2
    line = _error(capsys)
    assert "recipe.yaml" in line and "--recipe RECIPE.yaml" in line


def test_bad_numbers_are_usage_errors(run_dir, capsys):
    for bad in (["--max-new-tokens", "0"], ["--temperature", "-1"]):
        with pytest.raises(SystemExit) as exited:
            chat.main([str(run_dir), *bad])
        assert exited.value.code == 2
    assert "must be" in capsys.readouterr().err
