"""ops: the command line and one module per one-shot command (status, verify, gaps, ...).

The top of the tree: nothing in `consumer` imports it but `consumer.__main__`.
"""
