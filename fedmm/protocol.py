"""The record keys that the server and the hospitals agree on."""

from collections.abc import Mapping

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"

HOSPITAL_ID = "hospital-id"
GROUP = "group"  # a hospital's modality group, as an `AVAILABILITY_CODES` code (discovery)
NUM_EXAMPLES = "num-examples"  # Flower's weighting key: the hospital's training-set size
SERVER_ROUND = "server-round"
NUM_PAIRED_USED = "num-paired-used"
NUM_IMAGE_USED = "num-image-used"
NUM_REPORT_USED = "num-report-used"
TRAIN_LOSS = "train-loss"
TRAIN_STEPS = "train-steps"
TRAIN_SAMPLES = "train-samples"  # sample passes this round: the rows of every gradient step, summed
UPLOAD_BYTES = "upload-bytes"  # arrays a hospital sent in its training reply (measured by the server)
DOWNLOAD_BYTES = "download-bytes"  # arrays the server sent to that hospital for training
PROXIMAL_MU = "proximal-mu"  # Flower's FedProx config key
PERSONAL = "personal"  # the client's context.state record of parameters that never leave the hospital
IMAGE_EMBEDDINGS = "image-embeddings"  # (R, E) embeddings of the reference images
REPORT_EMBEDDINGS = "report-embeddings"  # (R, E) embeddings of the reference reports
PRIVACY_EXHAUSTED = "privacy-exhausted"  # 1: the hospital did not train (one more round would pass its budget)
DP_EPSILON = "dp-epsilon"  # the hospital's cumulative sample-level ε over every round it trained
DP_DELTA = "dp-delta"
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
DP_STEPS = "dp-steps"  # noisy DP-SGD steps, cumulative
CLIENT_DP_EPSILON = "client-dp-epsilon"  # the hospital's cumulative client-level ε (server-side accountant)
PRIVACY_LEDGER = "privacy-ledger"  # the client's context.state record of its DP-SGD history
CONTROL_VARIATES = "control-variates"  # SCAFFOLD: the server's c (to hospitals), a hospital's Δc_i (replies)
LOSS_AT_GLOBAL = "loss-at-global"  # q-FFL: the hospital's training loss of the heads it received, before training
TRAIN_TIME = "train-time-s"  # the hospital's virtual training time this round (conditions.compute)
LATE = "late"  # 1: the hospital missed the round's deadline and sends no update (conditions.late=drop)


def without_update(metrics: Mapping[str, float]) -> bool:
    """A training reply that carries no update: the hospital was past its privacy budget or missed the deadline."""
    return bool(metrics.get(PRIVACY_EXHAUSTED) or metrics.get(LATE))
