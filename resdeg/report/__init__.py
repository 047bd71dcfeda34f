"""The report: cached results -> figures, data downloads and bilingual Markdown pages for MkDocs."""
from .build import build_report

__all__ = ["build_report"]
