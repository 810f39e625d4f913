"""decode: Core blocks into play rows. Pure: no I/O, no clock, never raises on any bytes.

Imports only `consumer.model` (and the generated `consumer._pb`), so a decode rule can be
changed and tested with nothing else loaded (tests/unit/test_decode.py).
"""
