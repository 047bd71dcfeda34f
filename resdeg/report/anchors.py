"""Published numbers to set results beside (STUDY.md §6), with their sources; nothing here is measured."""
from __future__ import annotations

from ..config import HE_EPOCHS  # noqa: F401  (He et al.'s schedule is also protocol depth-he's)

# CIFAR-10 test error (%) of He et al.'s nets under their full schedule (about 164 epochs).
# he: He et al. 2015 (Table 6 for residual nets; read off Fig. 6 for plain nets, "about").
# reimpl: a 5-seed re-implementation with He's recipe (mean, std). li: Li et al. 2018.
DEPTH_TEST_ERROR = {
    ("resnet20", "FULL"): {"he": 8.75, "reimpl": (8.51, 0.22), "li": 7.37},
    ("resnet32", "FULL"): {"he": 7.51},
    ("resnet44", "FULL"): {"he": 7.17},
    ("resnet56", "FULL"): {"he": 6.97, "reimpl": (7.40, 0.27), "li": 5.89},
    ("resnet110", "FULL"): {"he": 6.43, "li": 5.79},
    ("resnet20", "Nres"): {"he": 9.5, "reimpl": (9.78, 0.13), "li": 8.18},
    ("resnet32", "Nres"): {"he": 10.0},
    ("resnet44", "Nres"): {"he": 11.0},
    ("resnet56", "Nres"): {"he": 13.0, "reimpl": (12.95, 0.22), "li": 13.31},
    ("resnet110", "Nres"): {"he": 60.0, "li": 16.44},
}
# Final *training* error (%) of plain nets, read off He et al. 2015 Fig. 6 ("about").
DEPTH_TRAIN_ERROR_PLAIN = {"resnet20": 1.0, "resnet32": 1.0, "resnet44": 3.0, "resnet56": 6.0}
# Fixup ResNet-110 without normalisation vs with BatchNorm (5 seeds, He's recipe): test accuracy %.
FIXUP_110 = {"Fixup": (93.0, 0.2), "FULL": (92.58, 0.08)}
SEED_STD_POINTS = (0.15, 0.3)  # typical seed-to-seed std of CIFAR-10 ResNets, in points

# The original study's own results (its code repository WaterMinding/Exp-ResNet, model_data/*.json; 224 px,
# fp32, seed 42, 20 epochs, its last epoch): final test accuracy and final running train accuracy, %.
ORIGINAL_FINAL = {
    ("resnet18", "FULL"): (85.87, 100.0), ("resnet18", "Nres"): (87.46, 100.0),
    ("resnet18", "Nbn"): (75.45, 87.45), ("resnet18", "Nboth"): (10.00, 10.07),
    ("resnet50", "FULL"): (77.90, 98.83), ("resnet50", "Nres"): (73.10, 97.37),
    ("resnet50", "Nbn"): (63.17, 65.58), ("resnet50", "Nboth"): (10.00, 10.01),
}
ORIGINAL_CODE = ("WaterMinding/Exp-ResNet", "https://github.com/WaterMinding/Exp-ResNet")

REFERENCES = {
    "he": ("He, Zhang, Ren, Sun (2015). Deep Residual Learning for Image Recognition", "https://arxiv.org/abs/1512.03385"),
    "li": ("Li, Xu, Taylor, Studer, Goldstein (2018). Visualizing the Loss Landscape of Neural Nets",
           "https://arxiv.org/abs/1712.09913"),
    "fixup": ("Zhang, Dauphin, Ma (2019). Fixup Initialization: Residual Learning Without Normalization",
              "https://arxiv.org/abs/1901.09321"),
    "skipinit": ("De, Smith (2020). Batch Normalization Biases Residual Blocks Towards the Identity Function in "
                 "Deep Networks", "https://arxiv.org/abs/2002.10444"),
    "brock": ("Brock, De, Smith (2021). Characterizing signal propagation to close the performance gap in "
              "unnormalized ResNets", "https://arxiv.org/abs/2101.08692"),
    "daneshmand": ("Daneshmand, Kohler, Bach, Hofmann, Lucchi (2020). Batch normalization provably avoids rank "
                   "collapse for randomly initialised deep networks", "https://arxiv.org/abs/2003.01652"),
    "kornblith": ("Kornblith, Norouzi, Lee, Hinton (2019). Similarity of Neural Network Representations Revisited",
                  "https://arxiv.org/abs/1905.00414"),
    "papyan": ("Papyan, Han, Donoho (2020). Prevalence of neural collapse during the terminal phase of deep "
               "learning training", "https://arxiv.org/abs/2008.08186"),
    "yu": ("Yu, Chan, You, Song, Ma (2020). Learning Diverse and Discriminative Representations via the Principle "
           "of Maximal Coding Rate Reduction", "https://arxiv.org/abs/2006.08558"),
    "roy": ("Roy, Vetterli (2007). The effective rank: a measure of effective dimensionality", None),
}
