"""Coverage-guided fuzzing of qpopper's hostile-input surfaces (docs/fuzzing.md)."""
