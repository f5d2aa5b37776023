"""Time and memory of reading a folder dataset and extracting (or loading) its features, per study.

    python benchmarks/folder_dataset.py /tmp/fold100k --studies 100000 --distinct 2000
    python benchmarks/folder_features.py /tmp/fold100k --cache /tmp/fold100k-cache [override ...]

Prints the wall time, the peak resident memory of this process and how many image files were decoded.
Run it twice: the second run decodes nothing. Extra arguments are Hydra overrides (e.g.
`encoders/image=resnet18 encoders.image.input_size=64 dataset.image_size=64` for a quick pass).
"""

import argparse
import resource
import time
from pathlib import Path

from fedmm.compose import compose_config
from fedmm.data import folder_dataset
from fedmm.data.folder_dataset import load_folder_dataset
from fedmm.models.features import load_features


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    cfg = compose_config(["dataset=folder", f"dataset.path={args.path}", f"cache_dir={args.cache}", *args.overrides])
    decoded = []
    original = folder_dataset.decode_image
    folder_dataset.decode_image = lambda *a: decoded.append(1) or original(*a)
    start = time.perf_counter()
    dataset = load_folder_dataset(cfg.dataset)
    read = time.perf_counter()
    features = load_features(dataset, cfg.encoders, args.cache, cfg.device, progress=True)
    done = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(dataset)} studies: manifest read and checked in {read - start:.1f} s, features "
          f"{tuple(features.image_features.shape)} + {tuple(features.report_features.shape)} in {done - read:.1f} s; "
          f"{len(decoded)} image files decoded; peak resident memory {peak_mb:.0f} MB "
          f"(encoder {cfg.encoders.image.name} at {cfg.encoders.image.input_size} px)")


if __name__ == "__main__":
    main()
