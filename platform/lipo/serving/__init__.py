"""Serving with Ray Serve: the policy and the reward model over HTTP, with auth and limits.

    lipo serve configs/serve_example.yaml            # or: serve run deploy/serve/lipo.yaml

`config` (ServeConfig, ServeArgs), `app` (the ingress deployment and `build_app`), `routes` (its HTTP routes and
error bodies), `local` (`lipo serve`: run it on this machine), `deployments` (policy and reward model replicas),
`security` (API key, 401/413/422 checks), `schemas` (OpenAI-compatible bodies and the field table), `streaming` (Server-Sent-Events chunks) and `model_source` (paths,
builtins, MLflow URIs). Nothing is imported here, so the config loads without Ray or torch.
"""
