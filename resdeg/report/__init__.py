"""The report: cached results -> figures, downloads and bilingual pages (resdeg report)."""
from .build import build_report  # noqa: F401
