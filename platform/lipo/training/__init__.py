"""Training: `config` (the three stage configs), `tasks` / `reward` (one object per task), `launch` (the driver:
prepare -> MLflow run -> Ray Train fit -> export), `loop` (the per-worker loop), `engine` (DeepSpeed, checkpoints,
export), `plan` (which lists each worker sees at each step), `rows` / `prepare` (driver-side data).

    lipo train configs/train_example.yaml        # launch(ListwiseTask(cfg)); also `lipo sft`, `lipo train-rm`

Nothing is imported here, so `import lipo.training.config` stays free of torch.
"""
