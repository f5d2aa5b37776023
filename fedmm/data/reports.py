"""Write a radiology report for a `Study` from varied templates.

Positive findings carry laterality, lung zone and size; absent findings may be negated ("No pleural
effusion.") or left unmentioned, as real reports do. A negation is only ever written for a finding
the study does not have, so the report never contradicts the image.
"""

import numpy as np

from fedmm.data.studies import Effusion, Nodule, Opacity, Pneumothorax, Study


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _heart_sentence(study: Study, rng: np.random.Generator) -> str | None:
    if study.cardiomegaly:
        return _pick(rng, ("The heart is enlarged.", "Cardiomegaly is present.", "Enlarged cardiac silhouette.",
                           "Moderate cardiomegaly.", "The cardiac silhouette is enlarged."))
    return _pick(rng, ("Heart size is normal.", "The cardiomediastinal silhouette is within normal limits.",
                       "Normal heart size.", "The heart is not enlarged."))


def _effusion_sentences(effusions: tuple[Effusion, ...], rng: np.random.Generator) -> list[str]:
    if len(effusions) == 2:
        size = effusions[0].size_word if effusions[0].size_word == effusions[1].size_word else "small to moderate"
        return [_pick(rng, (f"Bilateral {size} pleural effusions.", f"There are {size} bilateral pleural effusions."))]
    sentences = []
    for effusion in effusions:
        side, size = effusion.side, effusion.size_word
        sentences.append(_pick(rng, (
            f"{size.capitalize()} {side} pleural effusion.",
            f"There is a {size} {side}-sided pleural effusion.",
            f"Blunting of the {side} costophrenic angle consistent with a {size} effusion.",
        )))
    return sentences


def _opacity_sentence(opacity: Opacity, rng: np.random.Generator) -> str:
    side, zone = opacity.side, opacity.zone
    base = "base" if zone == "lower" else "apex"
    return _pick(rng, (
        f"Patchy airspace opacity in the {side} {zone} lobe.",
        f"There is focal consolidation in the {side} {zone} lung zone.",
        f"Airspace disease at the {side} lung {base}.",
        f"Hazy opacity projecting over the {side} {zone} lung.",
    ))


def _nodule_sentence(nodule: Nodule, rng: np.random.Generator) -> str:
    return _pick(rng, (
        f"A {nodule.size_mm} mm nodule in the {nodule.side} {nodule.zone} lung zone.",
        f"Small nodular density projecting over the {nodule.side} {nodule.zone} lung.",
        f"There is a {nodule.size_mm} mm pulmonary nodule in the {nodule.side} {nodule.zone} lobe.",
    ))


def _pneumothorax_sentence(pneumothorax: Pneumothorax, rng: np.random.Generator) -> str:
    side, size = pneumothorax.side, pneumothorax.size_word
    return _pick(rng, (
        f"{size.capitalize()} {side} apical pneumothorax.",
        f"There is a {size} {side} pneumothorax.",
        f"A {side} pleural line is seen with absent lung markings laterally, consistent with pneumothorax.",
    ))


def _negations(study: Study, rng: np.random.Generator) -> list[str]:
    """Sentences that deny absent findings; each is said only when it is true."""
    no_effusion, no_pneumothorax = not study.effusions, not study.pneumothoraces
    no_opacity, no_nodule = not study.opacities, study.nodule is None
    candidates = []
    if no_opacity and no_nodule and no_effusion and no_pneumothorax:
        candidates.append(_pick(rng, ("The lungs are clear.", "Lungs are clear bilaterally.")))
    if no_opacity:
        candidates.append(_pick(rng, ("No focal consolidation.", "No focal airspace disease.")))
    if no_effusion and no_pneumothorax:
        candidates.append(_pick(rng, ("No pleural effusion or pneumothorax.", "No effusion or pneumothorax.")))
    else:
        if no_effusion:
            candidates.append(_pick(rng, ("No pleural effusion.", "No pleural effusions.")))
        if no_pneumothorax:
            candidates.append("No pneumothorax.")
    if no_nodule:
        candidates.append(_pick(rng, ("No suspicious pulmonary nodules.", "No nodules or masses.")))
    keep = rng.random(len(candidates)) < 0.75  # real reports leave some negatives unsaid
    return [sentence for sentence, kept in zip(candidates, keep) if kept]


def _impression(study: Study, rng: np.random.Generator) -> str:
    if study.is_normal:
        return _pick(rng, ("No acute cardiopulmonary abnormality.", "No active disease.",
                           "Normal chest.", "No acute cardiopulmonary process."))
    parts = []
    if study.cardiomegaly:
        parts.append("cardiomegaly")
    parts += [f"{e.side} pleural effusion" for e in study.effusions]
    parts += [f"{o.side} {o.zone} lobe opacity" for o in study.opacities]
    if study.nodule is not None:
        parts.append(f"{study.nodule.side} {study.nodule.zone} lung nodule")
    parts += [f"{p.side} pneumothorax" for p in study.pneumothoraces]
    text = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    return text[0].upper() + text[1:] + "."


def write_report(study: Study, rng: np.random.Generator) -> str:
    """A two-section (FINDINGS / IMPRESSION) report describing `study`."""
    positives: list[str] = []
    positives += [_opacity_sentence(o, rng) for o in study.opacities]
    if study.nodule is not None:
        positives.append(_nodule_sentence(study.nodule, rng))
    positives += _effusion_sentences(study.effusions, rng)
    positives += [_pneumothorax_sentence(p, rng) for p in study.pneumothoraces]
    sentences = [_heart_sentence(study, rng)] + positives + _negations(study, rng)
    if rng.random() < 0.4:
        sentences.append(_pick(rng, ("The osseous structures are intact.", "No acute bony abnormality.",
                                     "Visualized osseous structures are unremarkable.")))
    findings = " ".join(sentence for sentence in sentences if sentence)
    return f"FINDINGS: {findings} IMPRESSION: {_impression(study, rng)}"
