"""Training data: the procedural "shapes" world (numpy + pillow only, no torch)."""
