"""The built-in scenarios, one module each (found by listing this package; ORDER fixes class ids)."""
