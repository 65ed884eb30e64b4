"""Self-tests of the contract suite: they run pytest on small generated provider projects."""

pytest_plugins = ["pytester"]
