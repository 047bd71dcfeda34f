"""What resdeg knows about each data set, declared once: what the pages call it, how many classes
it has, the per-channel statistics the CIFAR protocols normalise with, and whether CIFAR-10's
published results (report/anchors.py: He et al., Li et al., Fixup) may stand beside its runs.
Import-light on purpose (no torch): config.py and the report read it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSet:
    name: str  # the --dataset value
    title: dict  # {"en": ..., "zh": ...}: as the pages name it
    classes: int | None  # None: as many as the folder holds
    mean: tuple[float, float, float]  # per channel, of the training images, in [0, 1]
    std: tuple[float, float, float]
    published_cifar10: bool = False  # CIFAR-10's published numbers apply to its runs


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10 = DataSet("cifar10", {"en": "CIFAR-10", "zh": "CIFAR-10"}, 10,
                  (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), published_cifar10=True)
# The commonly used CIFAR-100 training-set statistics.
CIFAR100 = DataSet("cifar100", {"en": "CIFAR-100", "zh": "CIFAR-100"}, 100,
                   (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
# A folder's statistics are unknown before it is read; CIFAR-10's are the ones the study's own
# folder (the CIFAR-10 JPEG copy) has. Other data: `--set mean=...,... --set std=...,...`.
IMAGE_FOLDER = DataSet("imagefolder", {"en": "an image folder", "zh": "图像文件夹"}, None, CIFAR10.mean, CIFAR10.std)
SYNTHETIC = DataSet("synthetic", {"en": "synthetic data", "zh": "合成数据"}, 10, CIFAR10.mean, CIFAR10.std)

DATA_SETS: dict[str, DataSet] = {d.name: d for d in (CIFAR10, CIFAR100, IMAGE_FOLDER, SYNTHETIC)}


def identify(name: str, classes=()) -> DataSet:
    """What a run's data is: its data set, or CIFAR-10 for an image folder of CIFAR-10's classes
    (a copy of it, such as the JPEG copy the committed runs read)."""
    if name == IMAGE_FOLDER.name and sorted(classes) == sorted(CIFAR10_CLASSES):
        return CIFAR10
    return DATA_SETS.get(name, IMAGE_FOLDER)
