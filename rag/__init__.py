"""Knowledge base: document loading, Arabic-aware normalisation, chunking, embedding and retrieval."""
