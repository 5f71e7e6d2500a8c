"""Training jobs of ``tests/test_global_batch.py``: the classifier and AffinityNet on the tiny backbone, one global batch.

``python -m torch.distributed.run --standalone --nproc_per_node=N tests/global_batch_job.py OUT JOB[:ACCUMULATION] ...``
trains each job with N processes over gloo (``OUT/JOB/final.pt`` holds the weights); the test runs the same
``train`` in its own process for the 1-process weights. Every job uses the package's own pieces: the
networks, the classification and affinity losses, ``TrainTransform``'s augmentation, ``LabelMapSet`` and
``fit``; only the images are made up (in memory, one seeded generator per image).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch

from affinitynet.conventions import STRIDE
from affinitynet.data.transforms import ClassificationSet, LabelMapSet, TrainTransform
from affinitynet.dist import DistInfo, cleanup, init_distributed
from affinitynet.engine import fit, param_groups_sgd
from affinitynet.models import AffinityNet, Classifier, DeepLab, TinyNet
from affinitynet.ops.confident import pool_label_map
from affinitynet.stages.train_affinitynet import AffinityLoss
from affinitynet.stages.train_cam import classification_loss
from affinitynet.stages.train_segmentation import segmentation_loss

IMAGES, SIZE, CROP, CLASSES = 20, 56, 48, 3
BATCH, EPOCHS = 8, 2  # 20 images: 2 global batches an epoch (4 images dropped), 4 steps in all
# job -> (network, BatchNorm trains); the tiny backbone trains BatchNorm unless frozen
JOBS = {"classifier": ("classifier", True), "affinitynet": ("affinitynet", True),
        "classifier_frozen_bn": ("classifier", False), "affinitynet_frozen_bn": ("affinitynet", False),
        "deeplab_frozen_bn": ("deeplab", False)}


class Section:
    """The augmentation keys of a training section: random long side, flip, colour jitter, crop."""

    crop_size = CROP
    resize_long = [44, 64]
    color_jitter = 0.3


class Images:
    """The data-layer interface of the training sets: names, load_image, load_labels, num_classes."""

    num_classes = CLASSES

    def __init__(self):
        self.names = [f"img{i:02d}" for i in range(IMAGES)]

    def load_image(self, name: str) -> np.ndarray:
        rng = np.random.default_rng(int(name[3:]))
        return rng.integers(0, 256, size=(SIZE, SIZE + 8, 3), dtype=np.uint8)

    def load_labels(self, name: str) -> np.ndarray:
        labels = np.zeros(CLASSES, np.float32)
        labels[int(name[3:]) % CLASSES] = 1
        labels[(int(name[3:]) // 3) % CLASSES] = 1
        return labels

    def label_map(self, name: str) -> np.ndarray:
        """(H, W) uint8 confident-region labels whose ignored share grows with the image's number, so every
        process's part of a batch holds another number of labelled pairs."""
        i = int(name[3:])
        rng = np.random.default_rng(1000 + i)
        label = np.kron(rng.integers(0, CLASSES + 1, size=(SIZE // 8, (SIZE + 8) // 8)),
                        np.ones((8, 8), np.int64)).astype(np.uint8)
        label[: int(SIZE * (i % 5) / 5)] = 255
        return label


def build(job: str) -> tuple[torch.nn.Module, torch.utils.data.Dataset, object]:
    """(network, training set, loss) of ``job``, the network's initial weights seeded."""
    network, train_bn = JOBS[job]
    torch.manual_seed(0)
    backbone = TinyNet(freeze_bn=not train_bn)
    images = Images()
    if network == "classifier":
        model = Classifier(backbone, CLASSES)
        data = ClassificationSet(images, TrainTransform("cls", Section(), backbone.mean, backbone.std), seed=5)
        return model, data, classification_loss
    if network == "deeplab":  # no dropout: its masks come from each process's own random stream
        model = DeepLab(backbone, CLASSES + 1, dropout=0.0)
        data = LabelMapSet(images, images.names, images.label_map,
                           TrainTransform("seg", Section(), backbone.mean, backbone.std), seed=5)
        return model, data, segmentation_loss
    model = AffinityNet(backbone)
    data = LabelMapSet(images, images.names, images.label_map,
                       TrainTransform("aff", Section(), backbone.mean, backbone.std), seed=5,
                       reduce=lambda y: pool_label_map(y, CLASSES + 1, STRIDE))
    return model, data, AffinityLoss(radius=3)


def train(out: Path, job: str, info: DistInfo, accumulation: int = 1) -> dict:
    """Train ``job`` into ``out`` with ``info``'s processes; ``fit``'s summary."""
    model, data, loss = build(job)
    optimizer = param_groups_sgd(model.param_groups(), lr=0.05, weight_decay=5e-4, momentum=0.9)
    return fit(model, loss, data, optimizer=optimizer, epochs=EPOCHS, batch_size=BATCH, ckpt_dir=out, device="cpu",
               dist_info=info, seed=3, log_every=1, log=logging.getLogger(f"{job}.rank{info.rank}"),
               accumulation=accumulation)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    out, jobs = Path(argv[0]), argv[1:]
    info = init_distributed("cpu")
    for spec in jobs:
        job, _, acc = spec.partition(":")
        train(out / spec.replace(":", "_acc"), job, info, int(acc or 1))
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
