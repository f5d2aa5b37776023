"""Draw a `Study` as a grayscale, chest-X-ray-like image (PA view).

Coordinates are normalized: x in [-1, 1] from the image's left to right, y in [-1, 1] from top to
bottom. The patient's right side is on the image's left, as radiologists read a PA film.
"""

import numpy as np

from fedmm.data.studies import Study

# Intensities before contrast and noise (0 black, 1 white).
BACKGROUND, SOFT_TISSUE, LUNG, MEDIASTINUM, HEART, FLUID, FREE_AIR = 0.03, 0.42, 0.14, 0.62, 0.60, 0.50, 0.07


def side_sign(side: str) -> float:
    """Image-x direction of a patient side: patient right is image left (negative x)."""
    return -1.0 if side == "right" else 1.0


def _soft(signed_distance: np.ndarray, width: float = 0.015) -> np.ndarray:
    """Soft inside-mask from a signed distance (positive inside)."""
    return 1.0 / (1.0 + np.exp(-signed_distance / width))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int = 24) -> np.ndarray:
    """Low-frequency noise in about [-1, 1], shape (size, size)."""
    from scipy import ndimage  # here, not at the top: a process that only reads cached features skips it

    coarse = rng.standard_normal((cells, cells))
    return np.clip(ndimage.zoom(coarse, size / cells, order=1)[:size, :size] / 1.5, -1.5, 1.5)


def render_study(study: Study, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render `study` to a uint8 image of shape (size, size)."""
    a = study.anatomy
    axis = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")  # (S, S) each

    body = _soft(1.0 - np.hypot((x - a.center_x) / (a.thorax_half_width + 0.14), (y - a.center_y - 0.05) / 1.05), 0.02)
    image = BACKGROUND + (SOFT_TISSUE - BACKGROUND) * body

    lung_center_y = a.center_y - 0.08
    diaphragm_base = lung_center_y + 0.85 * a.lung_half_height
    lungs, lung_geometry = np.zeros_like(x), {}
    for side in ("right", "left"):
        lung_x = a.center_x + side_sign(side) * a.lung_offset
        u = (x - lung_x) / a.lung_half_width
        ellipse = 1.0 - np.hypot(u, (y - lung_center_y) / a.lung_half_height)
        dome = diaphragm_base - 0.12 * np.clip(1.0 - u**2, 0.0, 1.0)  # hemidiaphragm peaks mid-lung
        mask = _soft(ellipse * 0.3) * _soft(dome - y)
        lungs = np.maximum(lungs, mask)
        lung_geometry[side] = (lung_x, u, ellipse)
    markings = _smooth_noise(rng, size) * np.exp(-np.hypot(x - a.center_x, y - lung_center_y) / 0.6)
    lung_texture = LUNG + 0.05 * markings
    image = image * (1 - lungs) + lung_texture * lungs

    # Posterior ribs: bright bands that curve down laterally, over lungs and soft tissue alike.
    lateral = (x - a.center_x) / a.thorax_half_width
    for rib in range(9):
        rib_y = lung_center_y - a.lung_half_height * 0.95 + rib * 0.135 + 0.22 * lateral**2
        image += 0.06 * _soft(0.022 - np.abs(y - rib_y), 0.006) * body * (np.abs(lateral) > 0.12)
    mediastinum = _soft(0.085 - np.abs(x - a.center_x), 0.01) * _soft(diaphragm_base - y, 0.02) * body
    image = np.maximum(image, MEDIASTINUM * mediastinum)

    heart_half_width = a.cardiothoracic_ratio * a.thorax_half_width
    heart_x = a.center_x + 0.22 * heart_half_width  # the heart sits toward the patient's left
    heart_y = lung_center_y + 0.48 * a.lung_half_height
    heart = _soft(1.0 - np.hypot((x - heart_x) / heart_half_width, (y - heart_y) / 0.26), 0.03)
    image = image * (1 - heart) + HEART * heart

    for effusion in study.effusions:
        lung_x, u, ellipse = lung_geometry[effusion.side]
        toward_wall = np.clip((side_sign(effusion.side) * u + 1.0) / 2.0, 0.0, 1.0)  # 0 medial, 1 lateral
        level = diaphragm_base - effusion.height * 2 * a.lung_half_height * (0.7 + 0.5 * toward_wall)
        fluid = _soft(ellipse + 0.08, 0.02) * _soft(y - level, 0.02)
        image = image * (1 - fluid) + FLUID * fluid

    for opacity in study.opacities:
        lung_x, _, ellipse = lung_geometry[opacity.side]
        zone_y = lung_center_y + (-0.45 if opacity.zone == "upper" else 0.3) * a.lung_half_height
        center_x = lung_x + opacity.dx * a.lung_half_width
        center_y = zone_y + opacity.dy * 0.5 * a.lung_half_height
        blob = np.exp(-((x - center_x) ** 2 + (y - center_y) ** 2) / (2 * opacity.radius**2))
        image += 0.26 * blob * (0.75 + 0.4 * _smooth_noise(rng, size, cells=16)) * _soft(ellipse * 0.3)

    if (nodule := study.nodule) is not None:
        lung_x, _, ellipse = lung_geometry[nodule.side]
        zone_y = lung_center_y + (-0.45 if nodule.zone == "upper" else 0.3) * a.lung_half_height
        center_x = lung_x + nodule.dx * a.lung_half_width
        center_y = zone_y + nodule.dy * 0.5 * a.lung_half_height
        disc = _soft(nodule.radius - np.hypot(x - center_x, y - center_y), 0.008)
        image += 0.32 * disc

    for pneumothorax in study.pneumothoraces:
        lung_x, u, ellipse = lung_geometry[pneumothorax.side]
        # The collapsed lung is a smaller ellipse pulled medially and down, away from the apex and wall.
        shrink = pneumothorax.width
        inner_x = lung_x - side_sign(pneumothorax.side) * shrink * a.lung_half_width
        inner = 1.0 - np.hypot(
            (x - inner_x) / ((1 - shrink) * a.lung_half_width),
            (y - lung_center_y - shrink * 0.3 * a.lung_half_height) / ((1 - 0.5 * shrink) * a.lung_half_height),
        )
        in_lung = _soft(ellipse * 0.3) * _soft(diaphragm_base - 0.3 * a.lung_half_height - y, 0.03)
        air = in_lung * (1 - _soft(inner * 0.3))
        pleural_line = in_lung * _soft(0.012 - np.abs(inner * 0.3 * a.lung_half_width), 0.004)
        image = image * (1 - air) + FREE_AIR * air + 0.14 * pleural_line

    from scipy import ndimage

    image = a.contrast * (image - 0.3) + 0.3 + a.brightness
    image = ndimage.gaussian_filter(image, sigma=a.blur_sigma * size / 128)
    image = image + rng.normal(0.0, a.noise_sigma, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
