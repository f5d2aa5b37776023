"""Wall time and peak memory (PSS of all processes) of one `fedmm run` round with very many hospitals.

    python benchmarks/many_hospitals.py --hospitals 10000 --studies 62500 dataset.image_size=64 \\
        encoders.image.input_size=64

The federation of `benchmarks/scale.py` (fedavg, balanced, every hospital trains, 2 local epochs,
ResNet-18), one round and the evaluation of every hospital after it, on the default engine. Features
are extracted (or loaded) first and not counted. Partitioning needs 4 training studies per hospital,
so 10,000 hospitals need about 62,500 studies. Extra arguments are Hydra overrides.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from scale import fedmm_run, overrides_for

from fedmm.compose import compose_config
from fedmm.federation import load_federated_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hospitals", type=int, default=10000)
    parser.add_argument("--studies", type=int, default=62500)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    overrides = overrides_for(args.hospitals, args.studies, args.overrides)
    start = time.perf_counter()
    load_federated_data(compose_config(overrides), progress=True)
    features_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="fedmm-many-") as work:
        wall, peak = fedmm_run(overrides, 1, Path(work), sample_memory=True)
    print(json.dumps({"hospitals": args.hospitals, "studies": args.studies, "features_s": features_s,
                      "one_round_and_evaluation_wall_s": wall, "peak_pss_gb": peak / 1e9, "overrides": overrides}))


if __name__ == "__main__":
    main()
