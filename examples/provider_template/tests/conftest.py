"""Registers the provider in-process, so the contract test finds ``provider_name`` before
the distribution is installed (``pip install -e .`` registers the entry point; after that
this is a no-op)."""

from ccvault.registry import register_provider
from ccvault_myprovider import plugin

register_provider(plugin)
