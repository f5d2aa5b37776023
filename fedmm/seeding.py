"""Named random streams derived from the run's seed, so every draw is reproducible and independent."""

import numpy as np

# One stream per consumer; partition (1) and sampling (2) live next to their code.
HEADS_INIT_STREAM = 3
LOCAL_TRAIN_STREAM = 4
DISTILL_STREAM = 5  # the server's distillation steps (feddistill)
FINETUNE_STREAM = 6  # a hospital's fine-tuning before evaluation (finetune)
DP_NOISE_STREAM = 7  # client-level DP noise added by the server (Flower's wrappers)
ADVERSARY_STREAM = 8  # which hospitals misbehave (scenario.adversaries with a fraction), and their noise
AVAILABILITY_STREAM = 9  # each hospital's dropout rate and offline rounds (conditions.availability)
COMPUTE_STREAM = 10  # each hospital's training speed (conditions.compute)
SECAGG_STREAM = 11  # the stochastic rounding of a hospital's quantized update (secagg)
VALIDATION_STREAM = 12  # which studies of the global test pool form the validation split (early_stopping)


def derive_seed(seed: int, stream: int, *ids: int) -> int:
    """A 63-bit seed for (seed, stream, ids...), e.g. (run seed, LOCAL_TRAIN_STREAM, round, hospital)."""
    return int(np.random.SeedSequence([seed, stream, *ids]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))
