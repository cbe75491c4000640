"""`mcl bench`: the measured cost of a training step, and of the data that feeds it.

One job per module:

- ``flops``: FLOPs per training step (forward + backward, online + target) counted with
  ``torch.utils.flop_counter.FlopCounterMode``, split into parts (backbone, FPN, neck, predictors,
  target, loss), on the ``meta`` device so that paper mode (ResNet-50, B = 128, 224 px) counts in
  seconds on a CPU; references: supervised ResNet training and MoCo v2.
- ``timing``: wall-clock step time, unique images/s and peak memory of whole training steps
  (forward, backward, clipping, optimizer, EMA), variants interleaved, median of repeats.
- ``data_rate``: unique images/s that the 8-crop pipeline delivers per CPU core, and the fraction of
  a training loop's time spent waiting for the DataLoader.
- ``report``: the printed table, the markdown table and the JSON file.
- ``suite``: runs the sections for the command line (``mcl.commands.bench``).
"""
