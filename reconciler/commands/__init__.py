"""One module per command. Each takes settings and typed options, does the work through
the one-way flow (load → validate → expand → plan → gate → apply → record), and returns
a typed report. Rendering is `reconciler.views`' job; exit codes are read off reports.
"""
