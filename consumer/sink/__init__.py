"""sink: everything the service keeps in PostgreSQL, and the only package that writes it.

`plays` is the exactly-once write path (ledger, plays, checkpoint in one transaction),
`database` the session options and SQLSTATE classification, `lease` the writer lock,
`migrate` the schema. Imports the leaves only: never source, decode, trust, service or ops.
"""
