"""RoI retrieval: classify held-out ground-truth objects from the RoI features of the training objects.

- kNN (Wu et al. 2018's weighted vote, as SSL kNN monitors use it): cosine similarities ``s_j`` of a
  query to every training object, the ``k`` largest vote for their class with weight ``exp(s_j / T)``
  (k = 20, T = 0.07); the class with the largest total wins.
- linear: softmax regression on standardised features (``mcl.probes.linear``).

Top-1 accuracy over the held-out objects, beside the majority-class rate (``chance``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mcl.probes.linear import fit_softmax, predict, standardise


def knn_predict(train_x: Tensor, train_y: Tensor, query_x: Tensor, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 4096) -> Tensor:
    """Predicted class of each row of ``query_x (m, d)`` from ``train_x (n, d)``, ``train_y (n,)``."""
    bank = F.normalize(train_x.float(), dim=1)
    k = min(k, len(bank))
    out = []
    for part in query_x.split(chunk):
        sims, idx = (F.normalize(part.float(), dim=1) @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(part), num_classes)
        votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
        out.append(votes.argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(pred: Tensor, truth: Tensor) -> float:
    return float((pred == truth).float().mean()) if len(truth) else 0.0


def roi_retrieval(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, num_classes: int,
                  k: int = 20, steps: int = 50) -> dict:
    """``knn_acc``, ``linear_acc`` and ``chance`` (the most common training class' rate among ``val_y``)."""
    tx, vx = standardise(train_x.float(), val_x.float())
    weight, bias = fit_softmax(tx, train_y, num_classes, steps)
    majority = int(torch.bincount(train_y, minlength=num_classes).argmax())
    return {"knn_acc": accuracy(knn_predict(train_x, train_y, val_x, num_classes, k), val_y),
            "linear_acc": accuracy(predict(vx, weight, bias), val_y),
            "chance": accuracy(torch.full_like(val_y, majority), val_y),
            "train_objects": len(train_y), "val_objects": len(val_y)}
