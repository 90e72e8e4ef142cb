"""The whole workflow as one config:
(bootstrap) -> sft -> preferences -> train-rm -> build-lists -> train -> evaluate."""
