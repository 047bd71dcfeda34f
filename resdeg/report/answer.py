"""The landing page's answer, computed: per hypothesis what its verdicts say over every study, and
per component (residual connections, BatchNorm) what removing it does. Numbers only; the
sentences are in the index template."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import analysis as A
from . import verdicts as V
from .collect import Store, StudyResults


# the comparison-level reasons (verdicts.COMPARISON_REASONS, less "no_data", which is not stated) ->
# the HypothesisAnswer counter the landing page states them by; one list of those reasons, not two
COUNTED = {"no_degradation": "no_difference", "did_not_learn": "did_not_learn", "undecided": "undecided",
           "deeper_not_worse": "deeper_better"}
assert set(COUNTED) == V.COMPARISON_REASONS - {"no_data"}


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
    out = {h: HypothesisAnswer(h) for h in ("H1", "H2", "H3")}
    for sr in store.studies:
        for row in A.all_verdicts(sr):
            for h, v in row["verdicts"].items():
                ans = out[h]
                if v.reason in COUNTED:
                    setattr(ans, COUNTED[v.reason], getattr(ans, COUNTED[v.reason]) + 1)
                elif v.reason != "no_data":
                    getattr(ans, v.outcome).append((sr, row, v))
                    ans.single_seed |= v.single_seed and v.outcome != "inconclusive"
    return out


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
    def stopped_learning(self) -> list[str]:
        """Nets that did not learn (or diverged) once the component was removed, where the net with it
        learned: the plainest effect a component can have, which no accuracy difference can state.
        A net that stopped under several protocols is named once, its protocols after it."""
        protocols: dict[str, list[str]] = {}
        for e in self.effects:
            if e["other"].did_not_learn and not e["reference"].did_not_learn:
                name = f'{e["other"].label}{" (diverged)" if e["other"].diverged else ""}'
                seen = protocols.setdefault(name, [])
                if e["study"].study.protocol not in seen:
                    seen.append(e["study"].study.protocol)
        return [name if len(ps) == 1 else f"{name} ({', '.join(f'`{p}`' for p in ps)})" for name, ps in protocols.items()]

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
                e = A.effect(sr, comp)
                if e["complete"]:
                    out[comp.component].effects.append({**e, "study": sr})
    return out


def degradation(store: Store) -> list[dict]:
    """The depth comparisons of every study, with their degradation verdicts."""
    return [{**e, "study": sr} for sr in store.studies if sr.kind == "depth" for e in A.degradation(sr)]


def matrix(store: Store) -> list[dict]:
    """The results matrix: every study x model x variant."""
    return [{**row, "title": sr.title} for sr in store.studies for row in A.accuracy_rows(sr)]


def primary(store: Store) -> StudyResults | None:
    """The most serious study with results (the headline's first panel)."""
    return store.studies[0] if store.studies else None
