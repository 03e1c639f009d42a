"""One config from generator to report: the staged, re-runnable validation-study pipeline.

    config         the TOML config read and validated (`read_config`), `ExperimentError`
    pipeline       `run_experiment`: the stages in order, each skipped when its inputs are unchanged
    records        stage stamps, the run's tables read back, the `Context` stages run in
    split          stage split: the real manifest cut into reference and held-out parts by group
    generate       stage generate: per generator, the runtime's generate job
    screen         stages novelty (calibrated near-copy gate) and fidelity
    study          stages study (create, audit, invite) and analyze
    augment_stage  stage augment (optional): `evaluation.augment` on the run's images
    report         OUT/report.md and OUT/report.html from the run's records
    status         `experiment_status`, `experiment_report` (redo the analysis), `list_runs`
    example        `write_demo_inputs`: a small runnable experiment from shipped images
    augment_demo, augment_generate, generalist   the augmentation and generalist experiments

What the CLI and the admin's Experiments tab call is imported here.
"""
from studio.experiment.config import (STAGES, Config, ExperimentCancelled, ExperimentError, Generator,
                                      parse_config, read_config)
from studio.experiment.example import write_demo_inputs
from studio.experiment.pipeline import RunResult, StageRun, run_experiment
from studio.experiment.records import study_of
from studio.experiment.status import Status, experiment_report, experiment_status, list_runs

__all__ = ["STAGES", "Config", "ExperimentCancelled", "ExperimentError", "Generator", "RunResult", "StageRun",
           "Status", "experiment_report", "experiment_status", "list_runs", "parse_config", "read_config",
           "run_experiment", "study_of", "write_demo_inputs"]
