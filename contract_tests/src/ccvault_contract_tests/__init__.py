"""The shared ccvault contract suite."""
