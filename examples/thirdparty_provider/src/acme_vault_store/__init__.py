"""ACME example third-party ccvault provider."""
