"""The run lifecycle: start here to follow a run.

- `states`: the transition table, binding on every write;
- `records`: the typed shapes of runs, steps, messages and usage;
- `changes`: one function per status change (a guarded write plus its events), used by the
  API, the worker and the sweeper alike;
- `outcome`: the pure decision of how an upstream call ends the run;
- `run_sql`: every query about runs, steps and the messages runs write;
- `memory`: the same store in memory, for fast tests.

docs/run-lifecycle.md maps a run's life across the modules, in order.
"""
