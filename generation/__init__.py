"""Generation backends (transformers, vLLM, OpenAI-compatible servers). Not built yet."""
