"""The probes' scoring against hand-computable cases: separable features, constant features, known confusions."""

import torch

from mcl.probes.linear import fit_softmax, predict, standardise
from mcl.probes.retrieval import knn_predict, roi_retrieval
from mcl.probes.segmentation import confusion, grid_labels, iou_metrics, linear_segmentation


def two_clusters(n_per: int, dim: int = 8, seed: int = 0):
    """Class 1 around +e_0, class 2 around -e_0 (labels 1..K as the probes use them; 0 unused)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.05 * torch.randn(2 * n_per, dim, generator=g)
    x[:n_per, 0] += 1.0
    x[n_per:, 0] -= 1.0
    y = torch.tensor([1] * n_per + [2] * n_per)
    return x, y


def test_separable_features_give_100_percent_knn_and_linear_accuracy():
    tx, ty = two_clusters(30, seed=0)
    vx, vy = two_clusters(10, seed=1)
    result = roi_retrieval(tx, ty, vx, vy, num_classes=3, k=20)
    assert result["knn_acc"] == 1.0 and result["linear_acc"] == 1.0
    assert result["chance"] == 0.5 and result["train_objects"] == 60 and result["val_objects"] == 20


def test_constant_features_give_chance():
    """Every query is as close to every training object: one class is predicted for all, so a balanced
    held-out set scores exactly its rate, 50%."""
    ty = torch.tensor([1] * 30 + [2] * 30)
    vy = torch.tensor([1] * 10 + [2] * 10)
    result = roi_retrieval(torch.ones(60, 8), ty, torch.ones(20, 8), vy, num_classes=3)
    assert result["knn_acc"] == 0.5 and result["linear_acc"] == 0.5


def test_knn_follows_the_weighted_majority_of_the_k_nearest():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[0.2, 1.0], [1.0, 0.05]])
    assert knn_predict(bank, labels, query, num_classes=2, k=1).tolist() == [1, 0]
    # k=3: for the first query two class-0 neighbours at cosine ~0.2-0.3 lose to one class-1 at ~0.98 (T = 0.07)
    assert knn_predict(bank, labels, query, num_classes=2, k=3).tolist() == [1, 0]


def test_standardise_uses_the_training_statistics_and_zeroes_constant_dimensions():
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    other = torch.tensor([[2.0, 7.0]])
    a, b = standardise(train, other)
    assert torch.allclose(a, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(b[0, 0], torch.tensor(0.0)) and b[0, 1] > 1e5      # 2 / 1e-6: the floor, not a NaN


def test_softmax_regression_separates_a_linearly_separable_set_and_is_deterministic():
    x, y = two_clusters(20)
    w1, b1 = fit_softmax(x, y, 3, steps=20)
    w2, b2 = fit_softmax(x, y, 3, steps=20)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    assert torch.equal(predict(x, w1, b1), y)


def test_iou_metrics_match_a_hand_computed_confusion():
    truth = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 1, 0])
    conf = confusion(pred, truth, 3)
    assert conf.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = iou_metrics(conf)
    # IoU_0 = 2 / (3 + 3 - 2) = 0.5, IoU_1 = 2 / (2 + 3 - 2) = 2/3, IoU_2 = 0 / (1 + 0 - 0) = 0
    assert m["per_class_iou"] == [0.5, 2 / 3, 0.0]
    assert abs(m["miou"] - (0.5 + 2 / 3) / 3) < 1e-12 and abs(m["pixel_acc"] - 4 / 6) < 1e-12
    assert iou_metrics(confusion(truth[:3], truth[:3], 3))["per_class_iou"][1:] == [None, None]


def test_one_hot_features_segment_perfectly_and_constant_ones_score_the_majority_class():
    g = torch.Generator().manual_seed(0)
    train_y, val_y = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (200,), generator=g)
    one_hot = torch.eye(4)
    result = linear_segmentation(one_hot[train_y], train_y, one_hot[val_y], val_y, num_classes=4, steps=30)
    assert result["miou"] == 1.0 and result["pixel_acc"] == 1.0
    flat = linear_segmentation(torch.ones(400, 4), train_y, torch.ones(200, 4), val_y, num_classes=4, steps=30)
    assert abs(flat["miou"] - flat["chance_miou"]) < 1e-12


def test_grid_labels_read_each_stride_4_cell_at_its_centre():
    maps = torch.arange(64).reshape(1, 8, 8)
    assert grid_labels(maps).tolist() == [[[18, 22], [50, 54]]]
