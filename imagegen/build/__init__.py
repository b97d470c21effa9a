"""Making models rather than running them: tokenizers from open_clip's BPE, tiny random models for tests.
Generation never imports this package."""
