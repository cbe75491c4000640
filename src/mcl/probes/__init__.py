"""Frozen-feature dense probes: evidence that a checkpoint's features help dense prediction.

- :mod:`mcl.probes.data`: a COCO-format set resized to ``S x S``, with per-pixel class maps and boxes;
- :mod:`mcl.probes.encoder`: any init (mcl / MoCo / supervised checkpoint, exported file, ``random``) as a
  frozen detector-shaped encoder: C5, FPN P2..P5, RoI features;
- :mod:`mcl.probes.linear`: softmax regression on standardised features (the one trained part of a probe);
- :mod:`mcl.probes.segmentation`: linear segmentation (mIoU, pixel accuracy);
- :mod:`mcl.probes.retrieval`: RoI kNN and linear classification of ground-truth objects;
- :mod:`mcl.probes.frozen_detection`: the detector with body + FPN (+ box-head convs) frozen;
- :mod:`mcl.probes.run`: ``mcl probe``: all of them, a table, ``probe.json`` and a chart;
- :mod:`mcl.probes.online`: the same probes as a Lightning callback during pretraining.
"""
