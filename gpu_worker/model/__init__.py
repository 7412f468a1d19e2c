"""The Llama family in torch: config, rotary embeddings, paged attention, model and checkpoint loader."""

from gpu_worker.model.attention import AttentionMetadata, allocate_kv_cache, build_metadata
from gpu_worker.model.config import SUPPORTED_ARCHITECTURES, ModelConfig, ModelConfigError, UnsupportedModelError
from gpu_worker.model.llama import KVCache, LlamaForCausalLM
from gpu_worker.model.loader import CheckpointError, load_model

__all__ = [
    "SUPPORTED_ARCHITECTURES", "AttentionMetadata", "CheckpointError", "KVCache", "LlamaForCausalLM", "ModelConfig",
    "ModelConfigError", "UnsupportedModelError", "allocate_kv_cache", "build_metadata", "load_model",
]
