"""Find a run's probe for the report: every `probe-*.json` in its folder is validated by the
probe store; a done probe with the default settings wins, then the one with most images."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..probes.store import CorruptProbe, ProbeSettings, validate_probe_doc


@dataclass
class Found:
    doc: dict | None
    file: str | None
    note: str | None  # why doc is None, or a remark on the choice


def latest(folder: Path, config_hash: str) -> Found:
    valid, problems = [], []
    for path in sorted(Path(folder).glob("probe-*.json")):
        try:
            doc = validate_probe_doc(json.loads(path.read_text()), None, config_hash)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, CorruptProbe) as e:
            problems.append(f"{path.name}: {e}")
            continue
        valid.append((path, doc))
    done = [(p, d) for p, d in valid if d["status"] == "done"]
    if done:
        default = ProbeSettings().hash
        path, doc = max(done, key=lambda pd: (pd[1]["settings_hash"] == default, pd[1]["images"], pd[0].name))
        return Found(doc, path.name, None)
    if valid:
        path, doc = valid[0]
        return Found(None, path.name, f"probe skipped: {doc['reason']}")
    if problems:
        return Found(None, None, f"probe unusable ({problems[0]})")
    return Found(None, None, "not probed")
