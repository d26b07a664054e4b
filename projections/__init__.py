"""Read models and replay built by folding ``task.events`` with the pure core of ``streams``."""
