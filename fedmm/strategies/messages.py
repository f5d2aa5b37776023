"""The record keys that the server and the hospitals agree on."""

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"

HOSPITAL_ID = "hospital-id"
NUM_EXAMPLES = "num-examples"  # Flower's weighting key: the hospital's training-set size
SERVER_ROUND = "server-round"
NUM_PAIRED_USED = "num-paired-used"
NUM_IMAGE_USED = "num-image-used"
NUM_REPORT_USED = "num-report-used"
TRAIN_LOSS = "train-loss"
TRAIN_STEPS = "train-steps"
