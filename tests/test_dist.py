"""Distributed helpers, and ``fit`` on 2 CPU processes over gloo."""
import json
import logging
import os
import random
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from affinitynet import dist
from affinitynet.engine import fit, param_groups_sgd
from affinitynet.errors import ConfigError


def test_shard_is_disjoint_covering_and_deterministic():
    items = [f"img{i}" for i in range(11)]
    for world in (1, 2, 3, 4, 16):
        parts = [dist.shard(items, r, world) for r in range(world)]
        flat = [x for p in parts for x in p]
        assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))
        assert parts == [dist.shard(items, r, world) for r in range(world)]
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert dist.shard(range(5), 1, 2) == [1, 3]
    with pytest.raises(ValueError):
        dist.shard(items, 2, 2)


def test_single_process_defaults(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = dist.init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.is_main, info.distributed) == (0, 1, 0, True, False)
    assert dist.init_distributed("cpu") == info  # idempotent
    t = torch.tensor([1.0, 3.0])
    assert dist.all_reduce_mean(t) is t and t.tolist() == [1.0, 3.0]
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    dist.barrier()
    dist.cleanup()


def test_resolve_device():
    assert dist.resolve_device("cpu") == torch.device("cpu")
    assert dist.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError):
        dist.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            dist.resolve_device("cuda:0")
        with pytest.raises(ConfigError):
            dist.resolve_device("cuda")


def test_seed_everything_is_deterministic_and_differs_per_rank():
    def draw(seed, rank):
        dist.seed_everything(seed, rank)
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    assert draw(5, 0) == draw(5, 0)
    assert draw(5, 1) == draw(5, 1)
    assert draw(5, 0) != draw(5, 1)
    assert draw(5, 0) != draw(6, 0)


class TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))

    def param_groups(self):
        return [self.conv.weight, self.bn.weight], [self.conv.bias, self.bn.bias], [self.head.weight], [self.head.bias]


class Data(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.epochs = []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def ce_loss(model, batch, device):
    x, y = (t.to(device) for t in batch)
    return nn.functional.cross_entropy(model(x), y), {}


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = dist.init_distributed("cpu")
    assert dist.init_distributed("cpu") == info
    dist.seed_everything(100, rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = TinyBN()
    opt = param_groups_sgd(model.param_groups(), lr=0.05, weight_decay=1e-4, momentum=0.9)
    data = Data()
    summary = fit(model, ce_loss, data, optimizer=opt, epochs=2, batch_size=4, ckpt_dir=os.path.join(out_dir, "ckpt"),
                  device="cpu", dist_info=info, seed=1, log_every=1, log=logging.getLogger(f"rank{rank}"))
    mean = dist.all_reduce_mean(torch.tensor([float(rank)]))
    obj = dist.broadcast_object({"from": rank})
    params = {k: v for k, v in model.named_parameters()}
    torch.save({"params": params, "summary": summary, "mean": mean.item(), "obj": obj, "epochs": data.epochs},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.cleanup()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fit_on_two_gloo_processes_keeps_ranks_identical(tmp_path):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(var, None)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert set(r0["params"]) == set(r1["params"])
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    # 16 samples / batch 4 = 4 iterations per epoch, each rank running 2 samples of each
    assert r0["summary"]["steps"] == r1["summary"]["steps"] == 8
    assert r0["summary"]["final_loss"] == pytest.approx(r1["summary"]["final_loss"])
    assert r0["mean"] == r1["mean"] == 0.5
    assert r0["obj"] == r1["obj"] == {"from": 0}
    assert r0["epochs"] == r1["epochs"] == [1, 2]
    rows = [json.loads(line) for line in (tmp_path / "ckpt" / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(1, 9))  # written once, by rank 0
    assert (tmp_path / "ckpt" / "final.pt").is_file()
