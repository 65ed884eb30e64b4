"""The vault's rules as pure functions: read state in, plan out.

Every rule that belongs to the vault rather than to a database lives here once. A rule takes
the state a provider read inside its transaction and returns a plan (a frozen description of
the writes to make); the provider applies the plan atomically and stores nothing it did not
plan. Nothing in this package performs I/O or imports a provider.
"""
