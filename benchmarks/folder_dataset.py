"""Write the built-in synthetic studies as one dataset folder with sites, to time `dataset=folder` runs.

    python benchmarks/folder_dataset.py OUT [--studies 3000] [--sites 4] [--distinct K]
    time fedmm run dataset=folder dataset.path=OUT scenario=natural simulation.engine=inprocess run_dir=...

`--distinct K` draws only K studies and repeats them (their images as hard links, one path per study) to
reach `--studies` rows cheaply: a large manifest whose every image is still a file of its own to decode.

The images are PNGs at 128 px (the generator's size); two studies per patient; every fifth patient in
the manifest's test split; every 17th study lacks its image and every 13th its report (never both).
"""

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from fedmm.data.findings import FINDING_NAMES
from fedmm.data.hospital_folder import MANIFEST, write_hospital_folder
from fedmm.data.synthetic import generate_synthetic_cxr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--studies", type=int, default=3000)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--distinct", type=int, default=None, help="draw this many studies and repeat them")
    args = parser.parse_args()
    distinct = min(args.distinct or args.studies, args.studies)
    studies = generate_synthetic_cxr(distinct, 128, seed=11)
    patients = [f"p{index // 2}" for index in range(args.studies)]
    images = [None if i % 17 == 3 else studies.images[i] for i in range(distinct)]
    reports = [None if i % 13 == 5 and images[i] is not None else studies.reports[i] for i in range(distinct)]
    splits = ["test" if int(p[1:]) % 5 == 0 else "train" for p in patients]
    write_hospital_folder(args.out, [f"s{i}" for i in range(distinct)], patients[:distinct], images, reports,
                          splits[:distinct], studies.labels)
    with open(args.out / MANIFEST, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for index in range(distinct, args.studies):  # repeats: a new study id, patient and image path each
        row = dict(rows[index % distinct], study_id=f"s{index}", patient_id=patients[index], split=splits[index])
        if row["image"]:
            source, row["image"] = args.out / row["image"], f"images/s{index}.png"
            os.link(source, args.out / row["image"])
        rows.append(row)
    labels = np.array([[int(row[name]) for name in FINDING_NAMES] for row in rows])
    for row in rows:  # by patient: with 4 sites, 30%, 20%, 30% and 20% of the patients
        row["site"] = f"site-{min(args.sites - 1, int((int(row['patient_id'][1:]) % 10) * args.sites / 10))}"
    with open(args.out / MANIFEST, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0].keys()])
        writer.writeheader()
        writer.writerows(rows)
    print(f"written {args.out / MANIFEST}: {args.studies} studies ({distinct} distinct), labels "
          f"{list(FINDING_NAMES)} ({labels.mean(axis=0).round(2).tolist()} positive)")


if __name__ == "__main__":
    main()
