"""A run directory: resolved config, one metrics line per round, the final summary, heads and a plot.

Layout of `run_dir`:
    config.yaml       the resolved configuration; `fedmm run --config-file run_dir/config.yaml` reruns it
    metrics.jsonl     one JSON object per round (train per hospital; evaluation rounds add global,
                      per-hospital and per-modality-group metrics; simulated conditions add who was
                      offline or late, the round's virtual duration and the virtual clock)
    summary.json      final metrics (names in `fedmm.evaluation.metrics`), per hospital and per group,
                      with each metric's chance level and ceiling on the global test set; with early
                      stopping, those of the round selected on the validation split (`fedmm.runs.selection`)
    heads.safetensors the trained global heads (for `local`: one set per hospital, prefixed); with early
                      stopping the selected round's, and heads-last.safetensors the last round's
    metrics.png       metrics per round
"""

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from fedmm import protocol as keys
from fedmm.clients.adversary import resolve_adversaries
from fedmm.config import ConfigError, ExperimentConfig, config_to_dict
from fedmm.evaluation.metrics import CHANCE_PREFIX, reference_values
from fedmm.runs.selection import BEST_HEADS, LAST_HEADS, ModelSelection, save_heads
from fedmm.simulation.conditions import is_ideal

RoundCallback = Callable[[int, dict[str, Any]], None]
PRIVACY_PREFIXES = ("dp-", "client-dp-", "privacy-")  # training metrics on privacy (fedmm.protocol)
TIME_TO_FINAL = ("i2t_recall@10", "t2i_recall@10", "zeroshot_auroc_macro")  # summary.json's virtual_time_to_final_s


def default_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("outputs") / cfg.name / f"{cfg.strategy.name}-{cfg.scenario.name}-seed{cfg.seed}-{stamp}"


def claim_run_dir(cfg: ExperimentConfig) -> Path:
    """Create the run directory; refuse one that already holds a run (nothing is overwritten) unless
    resuming it, which needs its checkpoint."""
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if cfg.resume:
        if not (run_dir / "checkpoint.json").exists():
            raise ConfigError(f"resume=true: run_dir={str(run_dir)!r} holds no checkpoint to resume from")
        return run_dir
    if (run_dir / "summary.json").exists():
        raise ConfigError(f"run_dir={str(run_dir)!r} already holds a finished run; choose another run_dir "
                          "(or continue it with more rounds: fedmm run --resume RUN_DIR federation.rounds=N)")
    if (run_dir / "checkpoint.json").exists():
        raise ConfigError(f"run_dir={str(run_dir)!r} holds an unfinished run; continue it with "
                          "`fedmm run --resume RUN_DIR` or choose another run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def read_metric_lines(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of `run_dir/metrics.jsonl`, one per recorded round, in order; none before the first round."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def global_metrics_by_round(run_dir: Path) -> dict[int, dict[str, float]]:
    """The global test metrics of every evaluated round in `run_dir/metrics.jsonl`, by round: a run's
    learning curve, for comparing runs at equal rounds rather than at the rounds their selection chose."""
    return {line["round"]: line["global"] for line in read_metric_lines(run_dir) if "global" in line}


def summarize_hospitals(per_hospital: Mapping[int, Mapping[str, float]],
                        groups: Mapping[int, str]) -> dict[str, dict[str, float]]:
    """Per modality group: mean of each metric over the group's hospitals that report it.
    Across all hospitals: mean, worst (minimum) and spread (max - min) of each metric, over the hospitals
    whose split supports it (`evaluate_split` leaves a metric out where it cannot be measured), and how
    many those are (`hospital_support`)."""
    summary: dict[str, dict[str, float]] = {}
    by_group: dict[str, list[Mapping[str, float]]] = {}
    for hospital, metrics in per_hospital.items():
        by_group.setdefault(groups[hospital], []).append(metrics)
    for group, members in sorted(by_group.items()):
        summary[f"group/{group}"] = _reduce(members, lambda values: sum(values) / len(values))
    everyone = list(per_hospital.values())
    summary["hospital_mean"] = _reduce(everyone, lambda values: sum(values) / len(values))
    summary["hospital_worst"] = _reduce(everyone, min)
    summary["hospital_spread"] = _reduce(everyone, lambda values: max(values) - min(values))
    summary["hospital_support"] = _reduce(everyone, len)
    return summary


def _reduce(members: list[Mapping[str, float]], reduce: Callable[[list[float]], float]) -> dict[str, float]:
    names = sorted({name for metrics in members for name in metrics if not name.startswith(("num_", CHANCE_PREFIX))})
    reduced = {}
    for name in names:
        values = [m[name] for m in members if name in m and not math.isnan(m[name])]
        if values:
            reduced[name] = reduce(values)
    return reduced


class RunRecorder:
    """Writes a run's outputs as it goes; `finish` writes the summary, heads and plot."""

    def __init__(self, cfg: ExperimentConfig, groups: Mapping[int, str], global_labels: torch.Tensor, run_dir: Path,
                 on_round: RoundCallback | None = None, resume_round: int = 0,
                 sites: Mapping[int, str] | None = None) -> None:
        """`groups`: each hospital's modality group; `global_labels`: the global test set's finding labels.
        `resume_round`: continue a run whose rounds up to this one are in its metrics.jsonl. `sites`: the
        site each hospital stands for (scenario=natural), written to summary.json."""
        self.cfg, self.run_dir, self.on_round = cfg, run_dir, on_round
        self.groups, self.sites = dict(groups), dict(sites or {})
        self.adversaries = resolve_adversaries(cfg.scenario, cfg.seed)  # named in the summary
        self.reference = reference_values(global_labels)  # chance and ceiling of each metric on the global test set
        self.last_evaluation: dict[str, Any] = {}
        self.selection = ModelSelection(cfg.early_stopping) if cfg.early_stopping.metric else None
        self.selected_evaluation: dict[str, Any] = {}  # the evaluation line of the selected round
        self.clock_s = 0.0  # virtual time at the end of the last round recorded (conditions.compute)
        self.bytes_sent: dict[str, list[int]] = {"upload": [], "download": []}  # per hospital and round
        self.privacy: dict[int, dict[str, float]] = {}  # per hospital: its latest cumulative ε and DP settings
        self.sample_passes = 0  # every hospital's (or the pooled reference's) training rows, over every step
        self.started = time.perf_counter()
        # The saved config reruns the whole run from scratch (the same rounds, seeds and results).
        saved = config_to_dict(cfg) | {"resume": False}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
        kept = [line for line in read_metric_lines(run_dir) if line["round"] <= resume_round] if resume_round else []
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in kept))
        for line in kept:  # what finish() summarizes: bytes, privacy, the last evaluation
            self.absorb(line)

    def record(self, server_round: int, sampled: list[int], train: Mapping[int, Mapping[str, float]],
               global_metrics: Mapping[str, float] | None = None,
               hospital_metrics: Mapping[int, Mapping[str, float]] | None = None,
               fields: Mapping[str, Any] | None = None, validation: Mapping[str, float] | None = None,
               state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Append one round. `global_metrics`/`hospital_metrics` are given on evaluation rounds only;
        `fields`: the rest of the round's line (`RoundLog.fields`: offline, late, virtual time, client ε).
        `validation`: the validation split's metrics (early stopping), with `state`, the heads they measure,
        saved when the round is the best so far."""
        line: dict[str, Any] = {"round": server_round, "sampled": list(sampled),
                                "train": {str(h): dict(m) for h, m in sorted(train.items())}} | dict(fields or {})
        if "round_time_s" in line:
            line["clock_s"] = self.clock_s + line["round_time_s"]  # virtual time since the run started
        if global_metrics is not None:
            line["global"] = dict(global_metrics)
        if hospital_metrics is not None:
            line["hospitals"] = {str(h): {"group": self.groups[h], **m} for h, m in sorted(hospital_metrics.items())}
            line.update(summarize_hospitals(hospital_metrics, self.groups))
        if validation is not None:
            line["validation"] = dict(validation)
        self.absorb(line)
        if validation is not None and self.selection is not None and self.selection.best_round == server_round:
            if state is None:
                raise ValueError("record(validation=...) needs the heads it measured (state=) to keep the best round")
            save_heads(state, self.run_dir / BEST_HEADS)
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(line, sort_keys=True, allow_nan=True) + "\n")
        if self.on_round is not None:
            self.on_round(server_round, line)

    def absorb(self, line: dict[str, Any]) -> None:
        """Take one round's line into what the summary reports."""
        if "clock_s" in line:
            self.clock_s = line["clock_s"]
        for hospital, epsilon in line.get("client_dp_epsilon", {}).items():  # charged without training
            self.privacy.setdefault(int(hospital), {})["client_dp_epsilon"] = epsilon
        for hospital, metrics in line["train"].items():
            self.sample_passes += int(metrics.get(keys.TRAIN_SAMPLES, 0))
            for direction in self.bytes_sent:
                if f"{direction}-bytes" in metrics:
                    self.bytes_sent[direction].append(int(metrics[f"{direction}-bytes"]))
            reported = {key.replace("-", "_"): value for key, value in metrics.items()
                        if key.startswith(PRIVACY_PREFIXES)}
            if reported:
                self.privacy.setdefault(int(hospital), {}).update(reported)
        if "global" in line or "hospitals" in line:
            self.last_evaluation = line
        if "validation" in line and self.selection is not None and self.selection.observe(line["round"],
                                                                                           line["validation"]):
            self.selected_evaluation = line

    @property
    def should_stop(self) -> bool:
        """Early stopping's patience has run out."""
        return self.selection is not None and self.selection.exhausted

    def selection_summary(self) -> dict[str, Any]:
        if self.selection is None:
            return {}
        if self.selection.best_round is None:
            return {"selection": {"metric": self.selection.metric, "selected_round": None,
                                  "note": "no validation metric was measured (no global model): the last round"}}
        return {"selection": self.selection.summary()}

    def privacy_summary(self, retired: Mapping[int, str]) -> dict[str, Any]:
        """Each hospital's cumulative ε (sample- and client-level) at the end, and the largest of each."""
        hospitals = {
            str(h): dict(values) | ({"retired": retired[h]} if h in retired else {})
            for h, values in sorted(self.privacy.items())
        }
        hospitals.update({str(h): {"retired": reason} for h, reason in retired.items() if str(h) not in hospitals})
        largest = {
            f"max_{name}": max(values[name] for values in self.privacy.values() if name in values)
            for name in ("dp_epsilon", "client_dp_epsilon")
            if any(name in values for values in self.privacy.values())
        }
        if self.cfg.privacy.client.clipping != "none":
            poisson = self.cfg.federation.sampling == "poisson"
            largest["client_dp_sampling"] = ("poisson: ε amplified by sampling each hospital with probability m/N"
                                             if poisson else "fixed-size: no amplification claimed")
        return largest | {"hospitals": hospitals}

    def conditions_summary(self) -> dict[str, Any]:
        """Under simulated conditions: offline and late counts, the virtual time of the run, the virtual time
        at which each global metric first reached its final value (higher is better for all of them) and, with
        early stopping, the virtual time of the selected round (when the reported model existed)."""
        lines = read_metric_lines(self.run_dir)
        if not any("offline" in line or "clock_s" in line for line in lines) and is_ideal(self.cfg.conditions):
            return {}
        summary: dict[str, Any] = {
            "conditions": self.cfg.conditions.name,
            "offline_per_round": sum(len(line.get("offline", [])) for line in lines) / max(1, len(lines)),
        }
        if not any("clock_s" in line for line in lines):
            return summary
        summary |= {"late_per_round": sum(len(line.get("late", [])) for line in lines) / max(1, len(lines)),
                    "virtual_time_s": self.clock_s}
        evaluated = [line for line in lines if "global" in line]
        if evaluated:
            final = evaluated[-1]["global"]
            summary["virtual_time_to_final_s"] = {
                metric: next(line["clock_s"] for line in evaluated
                             if line["global"].get(metric, -math.inf) >= final[metric])
                for metric in TIME_TO_FINAL if metric in final
            }
        if "clock_s" in self.selected_evaluation:
            summary["virtual_time_to_selected_s"] = self.selected_evaluation["clock_s"]
        return summary

    def finish(
        self,
        heads_state: Mapping[str, torch.Tensor],
        stopped: str | None = None,
        retired: Mapping[int, str] | None = None,
        lost: Mapping[int, str] | None = None,
    ) -> dict[str, Any]:
        """Write summary.json, the heads and the plot; return the summary. `stopped`: why the run ended
        before its last round; `retired`: hospitals that stopped training, and why; `lost`: hospitals whose
        node failed, and how."""
        selected = self.selection is not None and self.selection.best_round is not None
        evaluation = self.selected_evaluation if selected else self.last_evaluation
        summary: dict[str, Any] = {
            "strategy": self.cfg.strategy.name,
            "scenario": self.cfg.scenario.name,
            "aggregator": self.cfg.aggregator.name,
            **({"adversaries": {str(h): f"{a.kind} x{a.scale:g}" for h, a in sorted(self.adversaries.items())}}
               if self.adversaries else {}),
            "seed": self.cfg.seed,
            "rounds": self.cfg.federation.rounds,
            "evaluated_round": evaluation.get("round"),
            **({"last_evaluated_round": self.last_evaluation.get("round"),
                "last_round_metrics": self.last_evaluation.get("global", {})} if selected else {}),
            "sample_passes": self.sample_passes,
            **evaluation.get("global", {}),
            **{key: value for key, value in evaluation.items() if key.startswith(("group/", "hospital_"))},
            "hospitals": evaluation.get("hospitals", {}),
            **({"selected_rounds": evaluation["selected_rounds"]} if "selected_rounds" in evaluation else {}),
            **({"hospital_sites": {str(h): site for h, site in sorted(self.sites.items())}} if self.sites else {}),
            # what one sampled hospital sends (upload) and receives (download) per round, in bytes of arrays
            **{
                f"{direction}_bytes_per_round": sum(sent) / len(sent)
                for direction, sent in self.bytes_sent.items()
                if sent
            },
            **self.reference,
            **({"privacy": self.privacy_summary(retired or {})} if self.privacy or retired else {}),
            **({"stopped": stopped} if stopped else {}),
            **({"lost_hospitals": {str(h): why for h, why in sorted(lost.items())}} if lost else {}),
            **self.conditions_summary(),
            **self.selection_summary(),
            "wall_time_s": round(time.perf_counter() - self.started, 2),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False))
        save_heads(heads_state, self.run_dir / (LAST_HEADS if selected else "heads.safetensors"))
        if selected:  # the selected round's heads are the run's heads
            shutil.copyfile(self.run_dir / BEST_HEADS, self.run_dir / "heads.safetensors")
        from fedmm.runs.plot import plot_metrics

        plot_metrics(self.run_dir, self.run_dir / "metrics.png", title=self.run_dir.name)
        return summary
