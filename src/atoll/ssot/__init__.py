"""The SSOT toolkit: keep a Python codebase single-source-of-truth.

Imports nothing from the rest of Atoll (an import-linter contract checks it), so
it can scan any codebase, Atoll's own included.
"""
