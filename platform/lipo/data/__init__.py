"""List datasets: the `ListRecord` contract, its Parquet schema, and validated reading/writing.

- `lipo.data.records`: `ListRecord` (one prompt, >= 2 responses, one label per response), `LIST_SCHEMA` and the
  row <-> record helpers every stage uses.
- `lipo.data.readers`: `read_lists` (JSONL/Parquet -> validated Arrow table + `ReadReport`) and `write_lists`.
- `lipo.data.importers`: `lipo import` (pairs, UltraFeedback, ranked replies -> lists);
  `lipo.data.hf_datasets`: Hugging Face `save_to_disk` folders and hub ids as inputs;
  `lipo.data.exporters`: `lipo export --format pairs` (lists -> TRL's DPO columns).
- `lipo.data.tokenize` (list records -> token ids), `collate` and `packing` (-> padded or packed torch tensors).
- `lipo.data.demos`: SFT demonstrations (one prompt, one response).

This init imports nothing so `import lipo.data.records` stays cheap.
"""
