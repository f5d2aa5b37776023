"""The chest X-ray finding vocabulary, with the text prompts that classify each finding zero-shot.

A vocabulary is part of a dataset's contract (`MultimodalDataset.findings`): this one labels the built-in
synthetic dataset and hospital folders (their manifest's label columns). Findings are for evaluation
only: no training objective reads them.
Laterality follows the patient: a *left* finding is drawn on the image's right side (PA view).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    name: str
    positive_prompts: tuple[str, ...]  # averaged into one text embedding (CLIP prompt ensembling)
    negative_prompts: tuple[str, ...]


FINDINGS: tuple[Finding, ...] = (
    Finding(
        "cardiomegaly",
        ("The heart is enlarged.", "Cardiomegaly.", "Enlarged cardiac silhouette."),
        ("Heart size is normal.", "No cardiomegaly.", "Normal cardiac silhouette."),
    ),
    Finding(
        "effusion_left",
        ("Left pleural effusion.", "There is a left-sided pleural effusion."),
        ("No left pleural effusion.", "The left costophrenic angle is sharp."),
    ),
    Finding(
        "effusion_right",
        ("Right pleural effusion.", "There is a right-sided pleural effusion."),
        ("No right pleural effusion.", "The right costophrenic angle is sharp."),
    ),
    Finding(
        "opacity_right_upper",
        ("Opacity in the right upper lung zone.", "Right upper lobe consolidation."),
        ("The right upper lung is clear.", "No right upper lobe consolidation."),
    ),
    Finding(
        "opacity_right_lower",
        ("Opacity in the right lower lung zone.", "Right lower lobe consolidation."),
        ("The right lower lung is clear.", "No right lower lobe consolidation."),
    ),
    Finding(
        "opacity_left_upper",
        ("Opacity in the left upper lung zone.", "Left upper lobe consolidation."),
        ("The left upper lung is clear.", "No left upper lobe consolidation."),
    ),
    Finding(
        "opacity_left_lower",
        ("Opacity in the left lower lung zone.", "Left lower lobe consolidation."),
        ("The left lower lung is clear.", "No left lower lobe consolidation."),
    ),
    Finding(
        "nodule",
        ("A pulmonary nodule.", "There is a small nodular density in the lung."),
        ("No pulmonary nodules.", "No nodules or masses."),
    ),
    Finding(
        "pneumothorax_left",
        ("Left pneumothorax.", "There is a left apical pneumothorax."),
        ("No left pneumothorax.", "No pneumothorax on the left."),
    ),
    Finding(
        "pneumothorax_right",
        ("Right pneumothorax.", "There is a right apical pneumothorax."),
        ("No right pneumothorax.", "No pneumothorax on the right."),
    ),
)

FINDING_NAMES: tuple[str, ...] = tuple(finding.name for finding in FINDINGS)
FINDING_INDEX: dict[str, int] = {name: index for index, name in enumerate(FINDING_NAMES)}
