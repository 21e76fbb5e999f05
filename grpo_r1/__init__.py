"""grpo_r1: GRPO reinforcement learning that teaches a small LLM to reason, on one consumer GPU.

Entry points: `python -m grpo_r1.train RECIPE.yaml`, `python -m grpo_r1.bench`, `python -m grpo_r1.evaluate`.
"""

import logging

# bitsandbytes' CPU backend warns when it is imported on a CPU without the optional `kernels`
# package ("Failed to load CPU gemm_4bit_forward ..."). grpo_r1 never runs a 4-bit matmul on a
# CPU (model.load_in_4bit needs a GPU), and the warning would come first in every error message.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
