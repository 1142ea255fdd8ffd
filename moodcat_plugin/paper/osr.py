"""Open-set recognition splits of the paper's Table 3 (CVAECapOSR's protocol), as data.

* "CIFAR": 6 known / 4 unknown CIFAR-10 classes, the three splits fixed in the authors' code
  (:data:`CIFAR6_SPLITS`); benchmarks ``configs/benchmarks/osr_cifar6_split{0,1,2}.yml``.
* "CIFAR+N": 4 known CIFAR-10 classes against N unknown CIFAR-100 classes. We follow the common
  definition (Neal et al., ECCV 2018): the known classes are CIFAR-10's four non-animal classes
  (airplane, automobile, ship, truck: :data:`CIFAR_PLUS_KNOWN`) and the unknown ones are drawn
  from CIFAR-100's 50 animal classes (:data:`CIFAR100_ANIMALS`: its nine animal superclasses plus
  "people", as in the published split files of later OSR work). The authors' code names
  [2, 1, 7, 8] (bird, automobile, horse, ship) as known and does not list its unknown draws;
  with bird and horse known, animal unknowns would overlap the known semantics, so we do not
  use it. CIFAR+10 uses :data:`PLUS10_DRAWS` draws (seeded, :func:`draw_unknown_classes`);
  CIFAR+50 is the whole pool (every draw of 50 from 50 is the same), so it has no spread over
  draws. Benchmark ``configs/benchmarks/osr_cifar_plus.yml`` holds every draw as an OOD set, so
  one classifier/generator/Cb serves CIFAR+10 and CIFAR+50.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

#: (known, unknown) CIFAR-10 class ids of the three "CIFAR" splits in the authors' code.
CIFAR6_SPLITS = (
    ([0, 7, 2, 8, 1, 9], [6, 4, 5, 3]),
    ([1, 2, 5, 6, 7, 4], [0, 3, 9, 8]),
    ([4, 8, 7, 0, 6, 2], [1, 3, 5, 9]),
)
#: CIFAR-10's non-animal classes: airplane, automobile, ship, truck.
CIFAR_PLUS_KNOWN = [0, 1, 8, 9]
#: CIFAR-100 fine-label id -> name of its 50 animal classes, by superclass (people included).
CIFAR100_ANIMALS: Dict[int, str] = {
    4: "beaver", 30: "dolphin", 55: "otter", 72: "seal", 95: "whale",                   # aquatic mammals
    1: "aquarium_fish", 32: "flatfish", 67: "ray", 73: "shark", 91: "trout",            # fish
    6: "bee", 7: "beetle", 14: "butterfly", 18: "caterpillar", 24: "cockroach",          # insects
    3: "bear", 42: "leopard", 43: "lion", 88: "tiger", 97: "wolf",                       # large carnivores
    15: "camel", 19: "cattle", 21: "chimpanzee", 31: "elephant", 38: "kangaroo",        # large omnivores/herbivores
    34: "fox", 63: "porcupine", 64: "possum", 66: "raccoon", 75: "skunk",               # medium mammals
    26: "crab", 45: "lobster", 77: "snail", 79: "spider", 99: "worm",                    # non-insect invertebrates
    2: "baby", 11: "boy", 35: "girl", 46: "man", 98: "woman",                            # people
    27: "crocodile", 29: "dinosaur", 44: "lizard", 78: "snake", 93: "turtle",           # reptiles
    36: "hamster", 50: "mouse", 65: "rabbit", 74: "shrew", 80: "squirrel",              # small mammals
}
PLUS10_DRAWS = 5
DRAW_SEED = 2018


def draw_unknown_classes(pool: Sequence[int], size: int, draws: int, seed: int = DRAW_SEED) -> List[List[int]]:
    """``draws`` sorted lists of ``size`` distinct ids from ``pool``, each drawn without
    replacement by one seeded numpy generator (the lists written into osr_cifar_plus.yml)."""
    rng = np.random.default_rng(seed)
    ordered = sorted(pool)
    return [sorted(int(v) for v in rng.choice(ordered, size=size, replace=False)) for _ in range(draws)]
