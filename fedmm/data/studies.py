"""What a synthetic study contains: its findings and their attributes, drawn before any pixel or word.

The image renderer and the report writer both read a `Study`, so a report can never contradict its
image: they describe the same object.
"""

from dataclasses import dataclass, field

import numpy as np

from fedmm.data.findings import FINDING_INDEX, FINDING_NAMES

SIDES = ("right", "left")  # patient sides; "right" is drawn on the image's left
ZONES = ("upper", "lower")

# Prevalence of each finding (independent draws, then the few implausible pairs are removed).
PREVALENCE = {
    "cardiomegaly": 0.22,
    "effusion": 0.12,  # per side; 0.30 per side when the heart is enlarged
    "opacity": 0.09,  # per lung zone
    "nodule": 0.10,
    "pneumothorax": 0.06,  # per side, never on a side with an effusion
}


@dataclass(frozen=True)
class Anatomy:
    """Normal anatomy that varies between patients and exposures (normalized image coordinates)."""

    center_x: float
    center_y: float
    thorax_half_width: float
    lung_offset: float
    lung_half_width: float
    lung_half_height: float
    cardiothoracic_ratio: float
    brightness: float
    contrast: float
    noise_sigma: float
    blur_sigma: float


@dataclass(frozen=True)
class Effusion:
    side: str
    height: float  # fraction of the lung height filled, 0.12–0.40

    @property
    def size_word(self) -> str:
        return "small" if self.height < 0.2 else "moderate" if self.height < 0.3 else "large"


@dataclass(frozen=True)
class Opacity:
    side: str
    zone: str
    radius: float
    dx: float  # position inside the zone, in units of the lung half-width / half-height
    dy: float


@dataclass(frozen=True)
class Nodule:
    side: str
    zone: str
    radius: float
    dx: float
    dy: float

    @property
    def size_mm(self) -> int:
        return int(round(self.radius * 250))  # radius 0.03 of the half-image ≈ 7–8 mm


@dataclass(frozen=True)
class Pneumothorax:
    side: str
    width: float  # fraction of the lung half-width that has collapsed away from the wall

    @property
    def size_word(self) -> str:
        return "small" if self.width < 0.3 else "moderate"


@dataclass(frozen=True)
class Study:
    anatomy: Anatomy
    cardiomegaly: bool
    effusions: tuple[Effusion, ...] = ()
    opacities: tuple[Opacity, ...] = ()
    nodule: Nodule | None = None
    pneumothoraces: tuple[Pneumothorax, ...] = field(default=())

    @property
    def labels(self) -> np.ndarray:
        """Multi-hot finding vector, shape (F,), in `FINDING_NAMES` order."""
        labels = np.zeros(len(FINDING_NAMES), dtype=np.int8)
        if self.cardiomegaly:
            labels[FINDING_INDEX["cardiomegaly"]] = 1
        for effusion in self.effusions:
            labels[FINDING_INDEX[f"effusion_{effusion.side}"]] = 1
        for opacity in self.opacities:
            labels[FINDING_INDEX[f"opacity_{opacity.side}_{opacity.zone}"]] = 1
        if self.nodule is not None:
            labels[FINDING_INDEX["nodule"]] = 1
        for pneumothorax in self.pneumothoraces:
            labels[FINDING_INDEX[f"pneumothorax_{pneumothorax.side}"]] = 1
        return labels

    @property
    def is_normal(self) -> bool:
        return not self.labels.any()


def sample_study(rng: np.random.Generator) -> Study:
    """Draw one patient's anatomy and findings."""
    cardiomegaly = bool(rng.random() < PREVALENCE["cardiomegaly"])
    anatomy = Anatomy(
        center_x=float(rng.normal(0.0, 0.03)),
        center_y=float(rng.normal(0.04, 0.03)),
        thorax_half_width=float(rng.uniform(0.72, 0.84)),
        lung_offset=float(rng.uniform(0.36, 0.42)),
        lung_half_width=float(rng.uniform(0.25, 0.30)),
        lung_half_height=float(rng.uniform(0.52, 0.62)),
        # Cardiothoracic ratio: < 0.5 is normal; the gap 0.47–0.55 keeps the label unambiguous.
        cardiothoracic_ratio=float(rng.uniform(0.55, 0.66) if cardiomegaly else rng.uniform(0.36, 0.47)),
        brightness=float(rng.uniform(-0.05, 0.05)),
        contrast=float(rng.uniform(0.8, 1.2)),
        noise_sigma=float(rng.uniform(0.01, 0.04)),
        blur_sigma=float(rng.uniform(0.4, 1.1)),
    )
    effusion_rate = 0.30 if cardiomegaly else PREVALENCE["effusion"]
    effusions = tuple(
        Effusion(side, float(rng.uniform(0.12, 0.40))) for side in SIDES if rng.random() < effusion_rate
    )
    opacities = tuple(
        Opacity(
            side, zone, float(rng.uniform(0.10, 0.17)), float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.3, 0.3))
        )
        for side in SIDES
        for zone in ZONES
        if rng.random() < PREVALENCE["opacity"]
    )
    nodule = None
    if rng.random() < PREVALENCE["nodule"]:
        nodule = Nodule(
            side=str(rng.choice(SIDES)),
            zone=str(rng.choice(ZONES)),
            radius=float(rng.uniform(0.03, 0.05)),
            dx=float(rng.uniform(-0.5, 0.5)),
            dy=float(rng.uniform(-0.35, 0.35)),
        )
    effusion_sides = {effusion.side for effusion in effusions}
    pneumothoraces = tuple(
        Pneumothorax(side, float(rng.uniform(0.18, 0.4)))
        for side in SIDES
        if rng.random() < PREVALENCE["pneumothorax"] and side not in effusion_sides
    )
    return Study(anatomy, cardiomegaly, effusions, opacities, nodule, pneumothoraces)
