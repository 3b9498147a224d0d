"""Gradient-inversion attacks on what the server saw (:class:`~privmed.attacks.record.UpdateRecord`)."""

from privmed.attacks.record import KINDS, VERSION, RecordError, UpdateRecord, load_truth, save_truth

__all__ = ["KINDS", "VERSION", "RecordError", "UpdateRecord", "load_truth", "save_truth"]
