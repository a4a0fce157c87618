"""Edge nodes: serving, streams, hard examples, the outbox and the center inbox (torch-free)."""
