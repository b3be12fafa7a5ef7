"""Renderings of command reports: one module per command, human text, JSON documents
(`document(report)` is what `--json` prints and what the dashboard's API serves) and
Markdown where a forge shows it. Views never do work; they only read reports."""
