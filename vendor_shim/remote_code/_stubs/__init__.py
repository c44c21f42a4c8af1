"""Stand-in modules for the remote-code worker (added to ``sys.path`` there only)."""
