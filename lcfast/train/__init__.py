"""Training dynamics: LC tracker, PGD robustness, the paper's models and data, grokking runs.

>>> from lcfast.train import LCTracker, log_schedule, pgd_attack, adversarial_accuracy
"""
from .pgd import accuracy, adversarial_accuracy, pgd_attack
from .schedule import log_schedule
from .state import preserved_state
from .tracker import LCTracker, read_log

__all__ = ["LCTracker", "log_schedule", "preserved_state", "read_log", "pgd_attack", "adversarial_accuracy",
           "accuracy"]
