"""Token-state checkpoints: records, stores (SQLite, Redis) and the background
writer. Pure Python; no vLLM import. Store drivers are imported lazily."""
