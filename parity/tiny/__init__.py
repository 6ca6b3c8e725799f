"""The built-in tiny checkpoint: a random-weight test model in Overworld's snapshot layout."""

from parity.tiny.checkpoint import TINY_REPO_ID, default_checkpoint_dir, ensure_checkpoint, is_tiny_checkpoint, make_checkpoint

__all__ = ["TINY_REPO_ID", "default_checkpoint_dir", "ensure_checkpoint", "is_tiny_checkpoint", "make_checkpoint"]
