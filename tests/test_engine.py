"""Training engine: optimiser groups, poly schedule, checkpoints, resume, NaN guard."""
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from affinitynet.data.transforms import ClassificationSet, TrainTransform
from affinitynet.engine import (LR_MULTIPLIERS, PolyLR, fit, load_checkpoint, param_groups_sgd,
                                save_checkpoint)
from affinitynet.errors import DataError, StageError


class TinyNet(nn.Module):
    """Backbone (conv + BN) and a new head, with dropout so resume must restore the RNG."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Conv2d(4, classes, 1)

    def forward(self, x):
        x = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.head(x).mean(dim=(2, 3))

    def param_groups(self):
        return ([self.conv.weight, self.bn.weight], [self.conv.bias, self.bn.bias], [self.head.weight],
                [self.head.bias])


class FakeDataset:
    """The data-layer interface the training sets use: names, load_image, load_labels."""

    def __init__(self, n=12, size=16, classes=3):
        self.names = [f"img{i:02d}" for i in range(n)]
        self.size, self.classes = size, classes

    def load_image(self, name):
        rng = np.random.default_rng(int(name[3:]))
        return rng.integers(0, 256, size=(self.size, self.size + 4, 3), dtype=np.uint8)

    def load_labels(self, name):
        labels = np.zeros(self.classes, np.float32)
        labels[int(name[3:]) % self.classes] = 1
        return labels


class Section:
    crop_size = 12
    resize_long = [14, 22]
    color_jitter = 0.3


def cls_loss(model, batch, device):
    img, labels = (t.to(device) for t in batch)
    logits = model(img)
    loss = nn.functional.multilabel_soft_margin_loss(logits, labels)
    return loss, {"acc": ((logits > 0).float() == labels).float().mean()}


def make_run(seed_init, epochs=2, **kw):
    torch.manual_seed(seed_init)
    model = TinyNet()
    opt = param_groups_sgd(model.param_groups(), lr=0.05, weight_decay=1e-3, momentum=0.9)
    data = ClassificationSet(FakeDataset(), TrainTransform("cls", Section()), seed=7)
    args = dict(optimizer=opt, epochs=epochs, batch_size=4, device="cpu", poly_power=0.9, seed=3,
                log_every=1, log=logging.getLogger("test"), config={"lr": 0.05})
    args.update(kw)
    return model, data, args


def test_param_groups_multipliers_and_weight_decay():
    model = TinyNet()
    opt = param_groups_sgd(model.param_groups(), lr=0.01, weight_decay=5e-4, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])
    assert [g["initial_lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 5e-4, 0.0]
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    assert opt.param_groups[2]["params"][0] is model.head.weight
    assert LR_MULTIPLIERS == (1.0, 2.0, 10.0, 20.0)


def test_param_groups_skip_frozen_and_reject_empty():
    model = TinyNet()
    model.conv.weight.requires_grad_(False)
    opt = param_groups_sgd(model.param_groups(), lr=0.01, weight_decay=0, momentum=0)
    assert all(p is not model.conv.weight for g in opt.param_groups for p in g["params"])
    with pytest.raises(ValueError):
        param_groups_sgd(([], [], [], []), lr=0.1, weight_decay=0, momentum=0)
    with pytest.raises(ValueError):
        param_groups_sgd(([model.head.weight],), lr=0.1, weight_decay=0, momentum=0)


def test_poly_lr_follows_formula_and_round_trips():
    model = TinyNet()
    opt = param_groups_sgd(model.param_groups(), lr=0.1, weight_decay=0, momentum=0.9)
    sched = PolyLR(opt, max_step=10, power=0.9)
    seen = {}
    for step in range(12):
        seen[step] = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    for step in (0, 1, 5, 9, 10, 11):
        f = max(0.0, 1 - step / 10) ** 0.9
        assert seen[step] == pytest.approx([0.1 * m * f for m in LR_MULTIPLIERS], abs=1e-12)
    assert seen[3][0] == pytest.approx(0.1 * 0.7 ** 0.9)

    # state_dict round trip: a fresh scheduler continues where the saved one was
    opt_a = param_groups_sgd(TinyNet().param_groups(), lr=0.1, weight_decay=0, momentum=0.9)
    sched_a = PolyLR(opt_a, max_step=10, power=0.9)
    for _ in range(4):
        opt_a.step()
        sched_a.step()
    opt_b = param_groups_sgd(TinyNet().param_groups(), lr=0.1, weight_decay=0, momentum=0.9)
    sched_b = PolyLR(opt_b, max_step=99, power=2.0)
    sched_b.load_state_dict(sched_a.state_dict())
    opt_b.load_state_dict(opt_a.state_dict())
    assert (sched_b.max_step, sched_b.power, sched_b.last_epoch) == (10, 0.9, 4)
    for _ in range(3):
        opt_a.step(), sched_a.step(), opt_b.step(), sched_b.step()
        assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]
    assert opt_b.param_groups[0]["lr"] == pytest.approx(0.1 * 0.3 ** 0.9)


def test_checkpoint_round_trip_unwraps_and_rejects_truncated(tmp_path):
    model = TinyNet()
    opt = param_groups_sgd(model.param_groups(), lr=0.1, weight_decay=0, momentum=0.9)
    path = save_checkpoint(tmp_path / "c.pt", model=nn.DataParallel(model), optimizer=opt, epoch=3, step=30,
                           config={"a": 1, "b": [1.5, 2]}, extra={"loss": 0.5})
    assert not [p for p in tmp_path.iterdir() if p.name != "c.pt"]  # no temp file left behind
    ckpt = load_checkpoint(path)
    assert set(ckpt["model"]) == set(model.state_dict())  # no "module." prefix
    assert (ckpt["epoch"], ckpt["step"], ckpt["config"], ckpt["extra"]) == (3, 30, {"a": 1, "b": [1.5, 2]},
                                                                           {"loss": 0.5})
    other = TinyNet()
    other.load_state_dict(ckpt["model"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))

    data = path.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(DataError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(DataError, match="foreign.pt"):
        load_checkpoint(foreign)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fit_writes_history_checkpoints_and_summary(tmp_path):
    model, data, args = make_run(0)
    calls = []

    def validate(m):
        assert not isinstance(m, nn.DataParallel)
        calls.append(m.training)
        return {"score": 1.0 * len(calls)}

    summary = fit(model, cls_loss, data, ckpt_dir=tmp_path, validate=validate, **args)
    assert summary["epochs"] == 2 and summary["steps"] == 6  # 12 samples // 4 = 3 iterations per epoch
    assert np.isfinite(summary["final_loss"]) and summary["resumed_from_epoch"] is None
    rows = _rows(tmp_path / "history.jsonl")
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[0]["lr"] == pytest.approx(0.05) and steps[3]["lr"] == pytest.approx(0.05 * 0.5 ** 0.9)
    assert {"loss", "acc", "epoch", "lr"} <= set(steps[0])
    assert [r["val"]["score"] for r in epochs] == [1.0, 2.0]
    assert epochs[-1]["loss"] == pytest.approx(summary["final_loss"])
    final = load_checkpoint(tmp_path / "final.pt")
    assert final["config"] == {"lr": 0.05} and final["optimizer"] is None
    assert all(torch.equal(final["model"][k], v) for k, v in model.state_dict().items())
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


class Interrupt(Exception):
    pass


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    model_a, data_a, args_a = make_run(0)
    fit(model_a, cls_loss, data_a, ckpt_dir=tmp_path / "a", **args_a)

    # same run, killed in the middle of epoch 2 (after one more iteration and one history row)
    model_b, data_b, args_b = make_run(0)
    count = [0]

    def dying_loss(model, batch, device):
        count[0] += 1
        if count[0] == 5:
            raise Interrupt
        return cls_loss(model, batch, device)

    with pytest.raises(Interrupt):
        fit(model_b, dying_loss, data_b, ckpt_dir=tmp_path / "b", **args_b)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    assert max(r["step"] for r in _rows(tmp_path / "b" / "history.jsonl")) == 4

    # a new process: different initial weights and RNG state, everything comes from last.pt
    model_c, data_c, args_c = make_run(123)
    torch.manual_seed(999)
    np.random.seed(999)
    summary = fit(model_c, cls_loss, data_c, ckpt_dir=tmp_path / "b", **args_c)
    assert summary["resumed_from_epoch"] == 1 and summary["steps"] == 6
    for k, v in model_a.state_dict().items():
        assert torch.allclose(model_c.state_dict()[k].float(), v.float(), atol=1e-6), k
    assert [r["step"] for r in _rows(tmp_path / "b" / "history.jsonl") if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(tmp_path / "b" / "final.pt")["step"] == 6


def test_resume_with_a_different_schedule_is_refused(tmp_path):
    model, data, args = make_run(0, epochs=1)
    fit(model, cls_loss, data, ckpt_dir=tmp_path, **args)
    model, data, args = make_run(0, epochs=3)
    with pytest.raises(StageError, match="last.pt"):
        fit(model, cls_loss, data, ckpt_dir=tmp_path, **args)


def test_nan_loss_stops_training_and_keeps_last_checkpoint(tmp_path):
    model, data, args = make_run(0, epochs=3)
    count = [0]
    snapshot = {}

    def nan_loss(model, batch, device):
        count[0] += 1
        loss, logs = cls_loss(model, batch, device)
        if count[0] == 5:  # epoch 2, global iteration 5
            snapshot["bytes"] = (tmp_path / "last.pt").read_bytes()
            return loss * float("nan"), logs
        return loss, logs

    with pytest.raises(StageError, match=r"loss became NaN at epoch 2 step 5; last good checkpoint kept at .*last.pt"):
        fit(model, nan_loss, data, ckpt_dir=tmp_path, **args)
    assert (tmp_path / "last.pt").read_bytes() == snapshot["bytes"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert not (tmp_path / "final.pt").exists()


def test_nan_in_first_epoch_says_no_checkpoint(tmp_path):
    model, data, args = make_run(0)

    def nan_loss(model, batch, device):
        return torch.tensor(float("nan"), requires_grad=True), {}

    with pytest.raises(StageError, match="epoch 1 step 1; no checkpoint"):
        fit(model, nan_loss, data, ckpt_dir=tmp_path, **args)
    assert not (tmp_path / "last.pt").exists()


def test_too_few_samples_for_a_batch(tmp_path):
    model, data, args = make_run(0)
    args["batch_size"] = 64
    with pytest.raises(StageError, match="no full batch"):
        fit(model, cls_loss, data, ckpt_dir=tmp_path, **args)
