"""Where a labeling round stands: progress and how well labelers agree. The admin page,
its JSON API and `tunelab label stats` all show this one report."""

from __future__ import annotations

from typing import Any

from tunelab.feedback.agreement import agreement_report
from tunelab.feedback.store import LabelStore


def labeling_report(labels: LabelStore) -> dict[str, Any]:
    names = {u.id: u.name for u in labels.users()}
    report = agreement_report(labels.judgements(), names)
    return {"progress": labels.progress(), "labels_per_prompt": labels.labels_per_prompt, **report}
