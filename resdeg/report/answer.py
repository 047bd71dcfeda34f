"""The landing page's answer, computed: per hypothesis what its verdicts say over every study, and
per component (residual connections, BatchNorm) what removing it does. Numbers only; the
sentences are in the index template."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..study import ARCHS, HYPOTHESIS_IDS, Comparison
from . import analysis, verdicts
from .collect import Store, StudyResults

# the comparison-level reasons (verdicts.COMPARISON_REASONS, less "no_data", which is not stated) ->
# the HypothesisAnswer counter the landing page states them by; one list of those reasons, not two
COUNTED = {"no_degradation": "no_difference", "did_not_learn": "did_not_learn", "undecided": "undecided",
           "deeper_not_worse": "deeper_better"}
assert set(COUNTED) == verdicts.COMPARISON_REASONS - {"no_data"}


@dataclass
class HypothesisAnswer:
    name: str
    supported: list = field(default_factory=list)  # (study, row, verdict)
    not_supported: list = field(default_factory=list)
    inconclusive: list = field(default_factory=list)  # a difference beyond noise, but the rule cannot decide
    no_difference: int = 0  # comparisons whose test accuracies do not differ beyond noise
    did_not_learn: int = 0
    undecided: int = 0  # seeds on both sides, but the 95% interval of the test difference includes zero
    deeper_better: int = 0  # depth comparisons where the deeper net is better: no degradation to explain
    single_seed: bool = False  # some deciding verdict rests on one seed

    @property
    def decided(self) -> int:
        return len(self.supported) + len(self.not_supported)

    @property
    def differing(self) -> int:
        return self.decided + len(self.inconclusive)

    @property
    def outcome(self) -> str:
        """The answer over all comparisons: supported / not_supported / mixed / inconclusive."""
        if self.supported and self.not_supported:
            return "mixed"
        if self.supported:
            return "supported"
        if self.not_supported:
            return "not_supported"
        return "inconclusive"

    def example(self):
        """The deciding verdict with the largest test difference, of the answer's majority."""
        pool = self.not_supported if self.outcome == "not_supported" else self.supported or self.not_supported
        return max(pool, key=lambda x: abs(x[2].numbers["test_diff"]["value"]), default=None)


def hypotheses(store: Store) -> dict[str, HypothesisAnswer]:
    out = {h: HypothesisAnswer(h) for h in HYPOTHESIS_IDS}
    for sr in store.studies:
        for row in analysis.all_verdicts(sr):
            for h, v in row["verdicts"].items():
                ans = out[h]
                if v.reason in COUNTED:
                    setattr(ans, COUNTED[v.reason], getattr(ans, COUNTED[v.reason]) + 1)
                elif v.reason != "no_data":
                    getattr(ans, v.outcome).append((sr, row, v))
                    ans.single_seed |= v.single_seed and v.outcome != "inconclusive"
    return out


class StoppedNet(NamedTuple):
    """A net that stopped learning without a component; `protocols` only when it did under several."""
    label: str
    diverged: bool
    protocols: list[str]


@dataclass
class ComponentAnswer:
    """What removing a component does, over every study's comparisons of that component."""
    name: str  # residual | batchnorm | normfree
    effects: list = field(default_factory=list)  # analysis.effect dicts, with "study"

    def count(self, key: str, sign: int) -> int:
        return sum(1 for e in self.effects if not e["stuck"] and e[key].sign == sign)

    @property
    def stuck(self) -> int:
        return sum(1 for e in self.effects if e["stuck"])

    @property
    def stopped_learning(self) -> list[StoppedNet]:
        """Nets that did not learn (or diverged) once the component was removed, where the net with it
        learned: the plainest effect a component can have, which no accuracy difference can state.
        A net that stopped under several protocols is named once, with its protocols."""
        nets: dict[tuple[str, bool], list[str]] = {}
        for e in self.effects:
            if e["other"].did_not_learn and not e["reference"].did_not_learn:
                seen = nets.setdefault((e["other"].label, bool(e["other"].diverged)), [])
                if e["study"].study.protocol not in seen:
                    seen.append(e["study"].study.protocol)
        return [StoppedNet(label, diverged, ps if len(ps) > 1 else []) for (label, diverged), ps in nets.items()]

    def largest(self, key: str = "dtest"):
        """The effect with the most negative difference among those beyond noise: the page names it
        after the counts of decided effects, so an undecided one would read as evidence."""
        decided = [e for e in self.effects if not e["stuck"] and e[key].sign != 0]
        return min(decided, key=lambda e: e[key].value, default=None)


def components(store: Store) -> dict[str, ComponentAnswer]:
    out = {c: ComponentAnswer(c) for c in ("residual", "batchnorm", "normfree")}
    for sr in store.studies:
        for comp in sr.comparisons():
            if comp.kind == "ablation" and comp.component in out:
                e = analysis.effect(sr, comp)
                if e["complete"]:
                    out[comp.component].effects.append({**e, "study": sr})
    return out


def degradation(store: Store) -> list[dict]:
    """The depth comparisons of every study, with their degradation verdicts."""
    return [{**e, "study": sr} for sr in store.studies if sr.kind == "depth" for e in analysis.degradation(sr)]


def matrix(store: Store) -> list[dict]:
    """The results matrix: every study x model x variant."""
    return [{**row, "title": sr.title} for sr in store.studies for row in analysis.accuracy_rows(sr)]


# -- the landing page's synthesis: one paragraph, every number from here --------------------------------

EARLY_STEPS = 100  # "from the first steps": the median gradient ratio over a run's first 100 steps


def early_ratio(run) -> float | None:
    """Median g(first stage) / g(last stage) over the first EARLY_STEPS steps: H2 measured before a
    net stops learning, so it can tell a cause of the failure from its consequence."""
    r = analysis.ratio_series(run)
    if r is None or not np.isfinite(r[:EARLY_STEPS]).any():
        return None
    return float(np.nanmedian(r[:EARLY_STEPS]))


def _geomean(values) -> float | None:
    v = [x for x in values if x is not None and x > 0]
    return float(10 ** np.mean(np.log10(v))) if v else None


@dataclass
class Failure:
    """A net that did not learn, with its gradient ratio early and over the whole run (geometric mean over seeds)."""
    study: StudyResults
    model: str
    variant: str
    early: float | None
    whole: float | None
    diverged: int  # of its seeds, how many diverged
    seeds: int

    @property
    def kind(self) -> str:
        """exploding (diverged or ratio above EXPLODE), vanishing_early (from the first steps),
        vanishing_later (only over the whole run), or none."""
        if self.diverged or (self.whole is not None and self.whole > verdicts.EXPLODE):
            return "exploding"
        if self.early is not None and self.early < verdicts.VANISH:
            return "vanishing_early"
        if self.whole is not None and self.whole < verdicts.VANISH:
            return "vanishing_later"
        return "none"


def failures(store: Store) -> list[Failure]:
    """Every (model, variant) that did not learn, once (the first study that has it)."""
    out, seen = [], set()
    for sr in store.studies:
        for model, variant, runs in sr.cells():
            if (model, variant) in seen or not analysis.side(sr, model, variant).did_not_learn:
                continue
            seen.add((model, variant))
            out.append(Failure(sr, model, variant, _geomean(early_ratio(r) for r in runs),
                               _geomean(analysis.median_ratio(r) for r in runs),
                               sum(r.status == "diverged" for r in runs), len(runs)))
    return out


def synthesis(store: Store) -> dict:
    """The numbers of the landing page's paragraph: the degradation and its verdicts, why nets fail
    to train at all, and what residual connections and BatchNorm do (each None when not measured)."""
    depth_sr = next((s for s in store.studies if s.name == "depth"), None) or \
        next((s for s in store.studies if s.kind == "depth"), None)
    out = {"degradation": None, "verdicts": None, "plain_ratios": None, "residual_deep": None,
           "failures": failures(store), "normfree": None, "bn_removed": None, "at_init": None,
           "training": None}
    if depth_sr is None:
        return out
    entries = analysis.degradation(depth_sr)
    plain = [e for e in entries if e["comparison"].reference[1] == "Nres"]
    if plain:
        p = plain[-1]  # shallowest vs deepest (study._depth_pairs)
        resid = next((e for e in entries if e["comparison"].reference[1] == "FULL"
                      and e["comparison"].reference[0] == p["comparison"].reference[0]
                      and e["comparison"].other[0] == p["comparison"].other[0]), None)
        out["degradation"] = {"plain": p, "residual": resid}
        row = next((r for r in analysis.all_verdicts(depth_sr) if r["comparison"] == p["comparison"]), None)
        out["verdicts"] = row and row["verdicts"]
        ratios = [10 ** r["ratio"].value for r in analysis.h2_rows(depth_sr) if r["variant"] == "Nres" and r["ratio"]]
        out["plain_ratios"] = (min(ratios), max(ratios)) if ratios else None
        deep = p["comparison"].other[0]
        rows = analysis.at_init_by_depth(depth_sr)
        at_init = {v: (analysis.at_init_row(rows, p["comparison"].reference[0], v), analysis.at_init_row(rows, deep, v))
                   for v in ("Nres", "FULL")}
        if all(a and b and a["corr_mean"] is not None and b["corr_mean"] is not None for a, b in at_init.values()):
            out["at_init"] = {"plain": at_init["Nres"], "residual": at_init["FULL"]}
        out["training"] = analysis.training_contrast(analysis.optim_over_training(depth_sr),
                                                     p["comparison"].reference[0], deep, "Nres")
        full_vs_plain = Comparison("ablation", "residual", (deep, "FULL"), (deep, "Nres"))
        if full_vs_plain.reference in {(m, v) for m, v, _ in depth_sr.cells()} and \
                full_vs_plain.other in {(m, v) for m, v, _ in depth_sr.cells()}:
            out["residual_deep"] = analysis.effect(depth_sr, full_vs_plain)
    bn = components(store)
    fixup = [e for e in bn["normfree"].effects if e["comparison"].other[1] == "Fixup"]
    out["normfree"] = max(fixup, key=lambda e: list(ARCHS).index(e["comparison"].reference[0]), default=None)
    out["bn_removed"] = [f for f in out["failures"] if f.variant == "Nbn"]
    return out
