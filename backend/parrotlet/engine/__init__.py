"""One LLM engine: paged KV cache + prefix tree, continuous batching, model runner, sampler."""
