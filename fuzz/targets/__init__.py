"""One module per fuzzed surface (docs/fuzzing.md, "Adding a target")."""
