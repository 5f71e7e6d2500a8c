"""Confusion matrix, IoU scores, CAM labels and the CAM threshold sweep against hand values and loops."""
import numpy as np
import pytest
import torch

from affinitynet.ops.metrics import cam_labels, cam_sweep, confusion_matrix, format_table, scores

GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [2, 2, 255, 255],
               [2, 2, 0, 0]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 0, 1, 255],
                 [2, 0, 1, 1],
                 [2, 2, 0, 0]], dtype=np.uint8)


def brute_confusion(pred, gt, k):
    conf = np.zeros((k, k + 1), dtype=np.int64)
    for p, g in zip(pred.reshape(-1).tolist(), gt.reshape(-1).tolist()):
        if g == 255:
            continue
        conf[g, p if p < k else k] += 1
    return conf


def test_hand_built_4x4_scores():
    conf = confusion_matrix(PRED, GT, 3)
    # by hand: class 0 TP 5 FP 1 (gt 2) FN 1 (pred 1); class 1 TP 3 FP 1 FN 1 (pred 255);
    # class 2 TP 3 FP 0 FN 1; the two gt-255 pixels are ignored
    expected = np.array([[5, 1, 0, 0],
                         [0, 3, 0, 1],
                         [1, 0, 3, 0]])
    np.testing.assert_array_equal(conf, expected)
    assert conf.dtype == np.int64
    r = scores(conf, ["bg", "a", "b"])
    assert r["iou"]["bg"] == pytest.approx(100 * 5 / 7)
    assert r["iou"]["a"] == pytest.approx(100 * 3 / 5)
    assert r["iou"]["b"] == pytest.approx(100 * 3 / 4)
    assert r["miou"] == pytest.approx(100 * (5 / 7 + 3 / 5 + 3 / 4) / 3)
    assert r["pixel_accuracy"] == pytest.approx(100 * 11 / 14)
    assert r["pixels"] == 14
    assert r["precision"] == pytest.approx({"bg": 100 * 5 / 6, "a": 100 * 3 / 4, "b": 100.0})
    assert r["recall"] == pytest.approx({"bg": 100 * 5 / 6, "a": 100 * 3 / 4, "b": 100 * 3 / 4})


def test_absent_class_excluded_and_predicted_only_class_counts():
    conf = confusion_matrix(PRED, GT, 4)  # class 3 in neither gt nor prediction
    r = scores(conf, ["bg", "a", "b", "c"])
    assert r["iou"]["c"] is None and r["precision"]["c"] is None and r["recall"]["c"] is None
    assert r["miou"] == pytest.approx(100 * (5 / 7 + 3 / 5 + 3 / 4) / 3)
    # a class only predicted (never in gt) has IoU 0 and enters the mean
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 1]], np.uint8)
    r = scores(confusion_matrix(pred, gt, 2), ["bg", "a"])
    assert r["iou"] == pytest.approx({"bg": 75.0, "a": 0.0})
    assert r["miou"] == pytest.approx(37.5)
    assert r["recall"]["a"] is None and r["precision"]["a"] == 0.0


def test_pred_255_is_wrong_not_ignored():
    gt = np.ones((2, 2), np.uint8)
    pred = np.array([[1, 1], [255, 7]], np.uint8)  # 255 and an id >= K both count as misses
    r = scores(confusion_matrix(pred, gt, 2), ["bg", "a"])
    assert r["iou"] == {"bg": None, "a": pytest.approx(50.0)}
    assert r["miou"] == pytest.approx(50.0)
    assert r["pixel_accuracy"] == pytest.approx(50.0)


def test_empty_and_all_ignored_no_division_by_zero():
    gt = np.full((3, 3), 255, np.uint8)
    r = scores(confusion_matrix(np.zeros((3, 3), np.uint8), gt, 3), ["bg", "a", "b"])
    assert r["miou"] == 0.0 and r["pixel_accuracy"] == 0.0 and r["pixels"] == 0
    assert all(v is None for v in r["iou"].values())


def test_confusion_matches_brute_force_and_torch_input():
    rng = np.random.default_rng(0)
    k = 5
    gt = rng.integers(0, k, (9, 11)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, k + 2, (9, 11)).astype(np.uint8)
    pred[rng.random(pred.shape) < 0.1] = 255
    expected = brute_confusion(pred, gt, k)
    np.testing.assert_array_equal(confusion_matrix(pred, gt, k), expected)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred).long(), torch.from_numpy(gt), k), expected)


def test_scores_accepts_square_matrix_and_sums():
    conf = confusion_matrix(PRED, GT, 3)
    square = conf[:, :3].copy()
    square[1, 0] += 1  # put the void-predicted pixel somewhere wrong: same FN for class 1, FP for class 0
    r = scores(square, ["bg", "a", "b"])
    assert r["iou"]["a"] == pytest.approx(100 * 3 / 5)
    assert r["iou"]["bg"] == pytest.approx(100 * 5 / 8)
    with pytest.raises(ValueError):
        scores(conf, ["bg", "a"])


def test_bad_gt_id_raises():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.full((2, 2), 7, np.uint8), 3)


def test_format_table():
    r = scores(confusion_matrix(PRED, GT, 4), ["background", "a", "b", "c"])
    text = format_table(r)
    lines = text.splitlines()
    assert lines[0].split() == ["class", "IoU", "precision", "recall"]
    row_a = next(ln for ln in lines if ln.startswith("a "))
    assert row_a.split() == ["a", "60.00", "75.00", "75.00"]
    row_c = next(ln for ln in lines if ln.startswith("c "))
    assert row_c.split() == ["c", "-", "-", "-"]
    assert f"{r['miou']:.2f}" in lines[-1]


def test_cam_labels_hand_values_and_ties():
    cams = np.array([[[0.9, 0.1], [0.3, 0.2]],
                     [[0.5, 0.6], [0.3, 0.0]]], np.float32)
    keys = np.array([2, 5])
    out = cam_labels(cams, keys, 0.25)
    # (0,0): 0.9 -> 2; (0,1): 0.6 -> 5; (1,0): tie of the two classes -> first (2); (1,1): 0.2 < bg -> 0
    np.testing.assert_array_equal(out, [[2, 5], [2, 0]])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(cam_labels(cams, keys, 0.3), [[2, 5], [0, 0]])  # a tie with bg goes to bg
    np.testing.assert_array_equal(cam_labels(torch.from_numpy(cams), torch.tensor([2, 5]), 0.25), out)
    assert not cam_labels(np.zeros((0, 2, 3), np.float32), np.zeros(0, int), 0.2).any()


@pytest.mark.parametrize("c", [0, 1, 3])
def test_cam_sweep_equals_loop(c):
    rng = np.random.default_rng(c)
    k, h, w = 6, 13, 17
    cams = rng.random((c, h, w)).astype(np.float32)
    cams[:, :3, :3] = 0.25  # exact ties with a threshold
    keys = rng.choice(np.arange(1, k), size=c, replace=False)
    gt = rng.integers(0, k, (h, w)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.15] = 255
    thresholds = [0.4, 0.05, 0.25, 0.25, 0.9, 1.0, 0.0]  # unsorted, with a duplicate
    sweep = cam_sweep(cams, keys, gt, thresholds, k)
    loop = np.stack([confusion_matrix(cam_labels(cams, keys, t), gt, k) for t in thresholds])
    assert sweep.shape == (len(thresholds), k, k + 1)
    np.testing.assert_array_equal(sweep, loop)


class _TwoImages:
    """A dataset stand-in: two 2x2 images with masks, 2 classes + background."""

    num_classes = 2
    label_names = ["background", "a", "b"]
    names = ["x", "y"]
    masks = {"x": np.array([[0, 1], [1, 255]], np.uint8), "y": np.array([[2, 2], [0, 0]], np.uint8)}

    def load_mask(self, name):
        return self.masks[name]


def test_accumulate_scores_against_a_given_target_instead_of_the_masks():
    from affinitynet.scoring import accumulate

    ds = _TwoImages()
    trained_on = {"x": np.array([[0, 0], [1, 1]], np.uint8), "y": np.array([[2, 2], [2, 0]], np.uint8)}
    pred = {"x": np.array([[0, 1], [1, 2]], np.uint8), "y": np.array([[2, 2], [0, 0]], np.uint8)}
    vs_masks = accumulate(ds, ds.names, pred.__getitem__)
    vs_target = accumulate(ds, ds.names, pred.__getitem__, target=trained_on.__getitem__)
    assert vs_masks[:, :3].tolist() == [[3, 0, 0], [0, 2, 0], [0, 0, 2]]  # the 255 pixel is ignored
    # rows: the labels trained on; x: 0->0, 0->1, 1->1, 1->2; y: 2->2, 2->2, 2->0, 0->0
    assert vs_target[:, :3].tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert scores(vs_target, ds.label_names)["iou"]["a"] == pytest.approx(100 / 3)


def test_segmentation_network_row_shows_its_fit_to_its_own_labels():
    from affinitynet.views import VIEWS

    rows = VIEWS["train_segmentation"].rows({"val_miou_single_scale": 50.0, "train_fit_miou": 70.0,
                                             "labels": "pseudo"})
    assert rows == [("val mIoU, single scale", 50.0), ("train mIoU vs its pseudo labels, single scale", 70.0)]
    assert VIEWS["train_segmentation"].rows({"train_fit_miou": 90.0, "labels": "gt"})[0][0].endswith(
        "vs the ground truth, single scale")
