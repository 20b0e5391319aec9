"""The limits of the settings.

Each limit is far beyond any real run: it refuses what would need absurd memory or time, what the
libraries cannot take (numpy seeds are 32-bit), or a normalisation that turns the images into numbers
the encoder cannot tell from a constant. The schema (:mod:`mtl.config.schema`) declares the
per-key ranges with these constants; :mod:`mtl.config.constraints` checks those across keys.
"""

from __future__ import annotations

__all__ = [
    "MAX_SEED",
    "MAX_EPISODES",
    "MAX_STEPS",
    "MAX_EPOCHS",
    "MAX_UPDATES",
    "MAX_TASKS",
    "MAX_BATCH",
    "MAX_IMAGE_SIZE",
    "MAX_WIDTH",
    "MAX_LR",
    "MAX_CLASSES",
    "MAX_GLYPHS_BYTES",
    "MAX_NAME",
    "MIN_MEAN",
    "MAX_MEAN",
    "MIN_STD",
    "MAX_STD",
]

MAX_SEED = 2**32 - 1
MAX_EPISODES = 100_000  # fixed evaluation episodes (the papers: 600; 2,000 resolve 1-point differences)
MAX_STEPS = 10_000  # gradient steps of an inner loop (the paper: 100), and mtl adapt --steps
MAX_EPOCHS = 10_000
MAX_UPDATES = 1_000_000  # meta-updates per epoch
MAX_TASKS = 10_000  # tasks per meta-batch (normal or extra)
MAX_BATCH = 1 << 20  # images per batch
MAX_IMAGE_SIZE = 1024  # pixels a side (the papers: 84; ImageNet models: 224)
MAX_WIDTH = 8192  # channels of a ResNet-12 stage, or hidden units of a head
MAX_LR = 100.0  # inner-loop step sizes (the paper: 0.01); outer rates are watched by the NaN check
MAX_CLASSES = 100_000  # glyphs classes, and images per glyphs class
MAX_GLYPHS_BYTES = 16 * 2**30  # the generated glyphs dataset, all splits, in memory and on disk
MAX_NAME = 100  # characters of a run name (one folder name)

# data.mean and data.std, of pixels / 255 (in [0, 1]); the encoder sees (pixels / 255 - mean) / std.
# A mean in [-1, 2] keeps |pixels / 255 - mean| <= 2, where bf16's 8 significant bits still tell apart
# pixel values two levels (of 255) apart; a 0-255 mean (123.7) leaves bf16 one or two values per image,
# a constant to the encoder. A std in [1e-3, 10] keeps the input finite (|input| <= 2,000, where a
# subnormal std gives inf and NaN in fp32) and its variance far above batch norm's epsilon (1e-5); a
# real channel's std lies in (0, 0.5], and 1e-3 is a quarter of one pixel level.
MIN_MEAN = -1.0
MAX_MEAN = 2.0
MIN_STD = 1e-3
MAX_STD = 10.0
