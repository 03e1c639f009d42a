"""Diffusion models: find and load them, generate with provenance, train and fine-tune.

    errors         ModelRuntimeError, the one base of every error raised on purpose
    registry       known models (assets/models.json)      modalities   what a model declares
    loading        load(model) -> LoadedModel               defaults     recommended steps/guidance
    devices        device and dtype choice                  schedulers   sampler names -> schedulers
    lora           adapters at load time                    quiet        library noise filters
    generation     generate(); per-image seeds, cancel      batching     MicroBatcher
    provenance     PNG/DICOM provenance, weights hashing    presets      prompt templates
    batch_job      the `medisyn generate` job (local or Ray)
    train          a compact model from scratch             finetune     LoRA/full fine-tuning
    training_data  fine-tuning's captioned images           mixture      weighted training sources

Imports no `studio`; reads images only through `studies.imaging`. See docs/runtime.md.
"""
