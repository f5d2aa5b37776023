"""Modalities and what a sample holds of them."""

from enum import Enum


class Modality(str, Enum):
    """One side of an image-report pair."""

    IMAGE = "image"
    REPORT = "report"


class Availability(str, Enum):
    """Which modalities a sample holds at its hospital."""

    PAIRED = "paired"
    IMAGE_ONLY = "image_only"
    REPORT_ONLY = "report_only"

    @property
    def has_image(self) -> bool:
        return self is not Availability.REPORT_ONLY

    @property
    def has_report(self) -> bool:
        return self is not Availability.IMAGE_ONLY


# Integer codes used in arrays (np.int8 per sample); order matches the Enum.
AVAILABILITY_CODES = {availability: code for code, availability in enumerate(Availability)}

# A hospital's modality group is the availability of most of its samples; tables list the groups in this order.
GROUPS = tuple(availability.value for availability in Availability)
