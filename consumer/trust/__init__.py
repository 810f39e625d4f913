"""trust: what was written against what the chain says.

`compare` holds the pure rules (what is missing, extra, another writer's), `reconcile`
the one read-compare-repair-record step that `verify`, the audit and the handover all
call. Imports the leaves, decode, source and sink; never service or ops.
"""
