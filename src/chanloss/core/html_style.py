"""The stylesheet shared by the HTML reports (``chanloss analyze`` and ``chanloss tune``)."""

from __future__ import annotations

__all__ = ["REPORT_CSS"]

REPORT_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; padding: 0 1em; max-width: 1400px;
       box-sizing: border-box; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td.l { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.row figure { margin: 0; flex: 1 1 300px; min-width: 0; max-width: 600px; }
figcaption, p.note { font-size: 0.85em; color: #555; }
"""
