"""The researcher's app at `/admin` (`view` builds it), one module per tab: studies and
results (`view`), Generate (`generate`), Evaluate (`evaluate`), Experiments (`experiments`);
`run_slots` bounds and cancels long runs."""
