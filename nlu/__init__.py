"""Understanding and answering: the LLM behind an OpenAI-compatible engine, prompts and tools."""
