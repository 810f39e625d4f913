"""source: finalized Core blocks from a node over gRPC, in height order, with no gap.

`core` is the transport and its driver (StreamBlocks, GetBlocks windows, GetBlock),
`sequencer` the pure rules that decide what to ask for next and what a reply may be.
Imports the leaves only: never decode, sink, trust, service or ops.
"""
