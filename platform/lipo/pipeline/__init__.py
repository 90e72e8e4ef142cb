"""The whole workflow as one config: (bootstrap) -> sft -> train-rm -> build-lists -> train -> evaluate."""
