# Source on the GPU machine (see docs/benchmarks.md): unpacks the carried site-packages
# (../shared/device/make_site.sh .carry/site.tgz liger-kernel) and points the recipes at the
# carried Qwen2.5 tokenizer and GSM8K files.
set -eo pipefail
rm -rf /tmp/site && mkdir -p /tmp/site && tar xzf .carry/site.tgz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export GRPO_R1_CACHE=/tmp/grpo_r1_cache
export GRPO_R1_QWEN_ARGS="model.tokenizer=$PWD/.carry/qwen2.5-tokenizer data.source=$PWD/.carry/gsm8k"
read -ra QWEN_ARGS <<<"$GRPO_R1_QWEN_ARGS"
