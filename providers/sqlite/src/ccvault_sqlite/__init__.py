"""ccvault provider package."""
