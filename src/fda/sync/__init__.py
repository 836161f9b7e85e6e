"""The rooms of `fda.Synchronizer`, each small and tested on its own (tests/sync/):

- `exchange`: the step's packed buffer and its protocol (pack, ONE Allreduce, the totals);
- `variants`: what a sync does (the plain mean; the mean, then an outer step), behind one method;
- `reference`: the global reference, w0 and the update direction xi;
- `accounting`: bytes (the paper's and MPI's) and time, with the one FLOAT_BYTES;
- `records`: the log's rows and its closing summary;
- `optimizer_state`: what a sync does to the optimizers (keep, reset, average);
- `setup`: settings merging and checks, and the initial broadcast.

The package imports none of them here, so each can be imported alone (fda.collectives uses
`accounting` without the rest).
"""
