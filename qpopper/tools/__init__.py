"""Administration tools: popauth (the pop.auth store)."""
