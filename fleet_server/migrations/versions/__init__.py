"""One module per schema revision, oldest first (0001 is schema version 1, the first release's)."""
