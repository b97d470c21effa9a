"""Evaluation: a pixel oracle that reads shape attributes back from generated images (numpy + pillow only)."""
