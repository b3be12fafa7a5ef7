"""Command adapters that do more than call the engine: they turn a command's options
into the engine's request (`apply`) or drive a loop of their own (`watch`). Every other
command calls `reconciler.engine` directly from the CLI module that declares it.
Rendering is `reconciler.views`' job; exit codes are read off reports.
"""
