"""One config from generator to report: the staged, re-runnable pipeline (`pipeline`), its
report (`report`), and the augmentation and generalist experiments (`augment_demo`,
`augment_generate`, `generalist`)."""
