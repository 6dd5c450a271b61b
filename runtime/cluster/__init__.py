"""Starting and stopping cluster processes: one way, used by `rt.init`, the CLI and tests."""
