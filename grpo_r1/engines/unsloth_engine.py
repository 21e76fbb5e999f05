"""The `unsloth` engine: Unsloth's fast_inference vLLM, which shares the model's weights.

`FastLanguageModel.from_pretrained(..., fast_inference=True)` starts a vLLM engine whose
weights are the training model's own (`model.vllm_engine`, `llm.shared_weights`), and
`FastLanguageModel.get_peft_model` adds `model.load_lora`. Each adapter version then goes
to vLLM as `model.load_lora(folder, load_tensors=True)`: a LoRARequest built from the live
LoRA tensors, with a new id each call (unsloth_zoo.vllm_utils.load_lora, 2026.10.9), passed
as `lora_request` to `model.vllm_engine.generate` (= `model.fast_generate`). Nothing is
copied but the adapter, and the base weights are never loaded twice.

Written against the source of unsloth / unsloth_zoo 2026.10.9 and tested with the vLLM
boundary faked: it has not run on a GPU (docs/engines.md).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grpo_r1.engines.base import Completion, Engine, SamplingSettings
from grpo_r1.engines.vllm_io import completions_from_vllm, vllm_requests
from grpo_r1.errors import EngineError


class UnslothEngine(Engine):
    """Samples through the vLLM engine Unsloth attached to `model` (fast_inference=True).

    Args:
        model: the PeftModel from FastLanguageModel.get_peft_model (the one the trainer trains).
        sampling: sampling settings.
        sampling_params: builds vLLM SamplingParams (default vllm.SamplingParams; tests fake it).
    """

    name = "unsloth"

    def __init__(self, model: Any, sampling: SamplingSettings, *,
                 sampling_params: Callable[..., Any] | None = None) -> None:
        super().__init__(sampling)
        llm = getattr(model, "vllm_engine", None)
        load_lora = getattr(model, "load_lora", None)
        if llm is None or load_lora is None:
            raise EngineError(
                "generation.engine=unsloth needs the model from Unsloth's FastLanguageModel.from_pretrained("
                "..., fast_inference=True) wrapped by FastLanguageModel.get_peft_model; this model has no "
                "vllm_engine/load_lora. Set model.backend=unsloth, or use generation.engine=vllm or hf"
            )
        if sampling_params is None:
            from vllm import SamplingParams as sampling_params  # noqa: N813
        self.model = model
        self.llm = llm
        self._load_lora = load_lora
        self._sampling_params = sampling_params
        self._lora: Any = None
        # Unsloth writes the live adapter_config.json here once (load_tensors=True reads tensors from memory).
        self._adapter_dir = Path(tempfile.mkdtemp(prefix="grpo_r1_unsloth_lora_"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._adapter_dir, True)

    def sync(self, model: Any, version: int) -> bool:
        if self.is_served(model, version):
            return False
        if model is not None and model is not self.model and getattr(model, "vllm_engine", None) is not self.llm:
            raise EngineError("the unsloth engine serves the adapter of the model it was built with; build the engine "
                              "from the same model the trainer trains")
        self._lora = self._load_lora(str(self._adapter_dir), load_tensors=True)
        self._mark_served(model, version)
        return True

    def generate(self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int]) -> list[list[Completion]]:
        params, inputs = vllm_requests("unsloth", self._lora is not None, self.sampling, self._sampling_params,
                                       prompt_ids, counts)
        if not inputs:
            return []
        sleeps = self._sleep_mode()
        if sleeps:
            self.llm.wake_up()  # untagged: Unsloth's allocator skips the shared weights anyway
        try:
            outputs = self.llm.generate(inputs, sampling_params=params, lora_request=self._lora, use_tqdm=False)
        finally:
            if sleeps:
                self.llm.sleep(1)
        return completions_from_vllm(outputs, counts)

    def _sleep_mode(self) -> bool:
        """Whether Unsloth started vLLM with sleep mode (UNSLOTH_VLLM_STANDBY=1)."""
        model_config = getattr(getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None),
                               "model_config", None)
        return bool(getattr(model_config, "enable_sleep_mode", False))

    def close(self) -> None:
        self._lora = None
        self._served = None
        self._cleanup()
