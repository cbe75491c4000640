"""The run plumbing every pretraining method shares, one job per module.

``trainer`` (the Lightning Trainer with our callbacks), ``fit`` (a run from start to summary: refuse to
overwrite, resume, save the resolved config), ``checkpoints`` (atomic writes, the newest valid one),
``atomic`` (the one file writer), ``resume`` (exact data order and RNG across restarts), ``nonfinite``
(undo a non-finite step on the device), ``preemption`` (checkpoint, then stop, on a signal), ``csvlog``
(a CSV log that resumes), ``speed`` (channels-last, compile) and ``summary`` (the end-of-run text and
curves).
"""
