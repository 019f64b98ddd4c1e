"""Generated documentation (docs/reference) and the code that writes it."""
