"""service: the long-running process that wires source -> decode -> sink.

Start-up, the writing sessions, batching, the write loop, readiness and the metrics
endpoint. May import every package but ops.
"""
