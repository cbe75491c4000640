"""mcl: Multi-Level Contrastive Learning pretraining for dense prediction, and transfer to detectors."""

import os

# OpenMP threads that spin while waiting make every op 10-30x slower as soon as anything else
# (loader workers, a second process) wants the same cores: measured on a 2-core machine, a tiny
# MCL step took 0.4 s with passive waiting and 3-14 s with the default. It must be set before
# torch starts its thread pool, hence here; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.2.0"
