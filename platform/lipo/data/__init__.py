"""List datasets: the `ListRecord` contract, its Parquet schema, and validated reading/writing.

- `lipo.data.records`: `ListRecord` (one prompt, >= 2 responses, one label per response), `LIST_SCHEMA` and the
  row <-> record helpers every stage uses.
- `lipo.data.readers`: `read_lists` (JSONL/Parquet -> validated Arrow table + `ReadReport`), `write_lists`, and
  `to_ray_dataset` to hand the validated table to Ray Data.

This init imports nothing so `import lipo.data.records` stays cheap.
"""
