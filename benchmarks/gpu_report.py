"""Targets, the markdown table and the docs update of the GPU suite (benchmarks/gpu_check.py calls these).

Not run on its own: `bash benchmarks/gpu_check.sh` (or `python benchmarks/gpu_check.py --smoke`).
A target that was not measured (its setting skipped, or TRL unavailable) gets "pass": null; missing a speed target
is reported, never an error.
"""

from __future__ import annotations

import re
from pathlib import Path

BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"


def _find(settings: list[dict], **want) -> dict | None:
    for s in settings:
        if "error" not in s and all(s.get(k) == v for k, v in want.items()):
            return s
    return None


def _target(name: str, value, threshold: float) -> dict:
    return {"target": name, "threshold": threshold, "value": value,
            "pass": None if value is None else bool(value >= threshold)}


def _default_attn(settings: list[dict], model: str, k: int, stage: int) -> dict | None:
    """The packed setting as lipo would run it (flex on a GPU when supported), not the forced-sdpa comparison."""
    cands = [s for s in settings if s.get("kind") == "lipo" and s.get("model") == model and s.get("K") == k
             and s.get("zero_stage") == stage and s.get("packing") and "error" not in s]
    cands.sort(key=lambda s: s.get("attention") != "flex_attention")
    return cands[0] if cands else None


def targets(data: dict) -> list[dict]:
    settings = data.get("mfu", {}).get("settings", [])
    big = _default_attn(settings, "1.26B", 8, 2)
    ceil = _find(settings, kind="ceiling", model="1.26B", K=8)
    out = [_target("1.26B K=8 packed ZeRO-2 MFU", big and big.get("mfu"), 0.30),
           _target("1.26B K=8 packed ZeRO-2 MFU / ceiling MFU",
                   big and ceil and big.get("mfu") and ceil.get("mfu") and big["mfu"] / ceil["mfu"], 0.85)]
    ratios = {}
    for s in settings:
        if s.get("kind") == "lipo" and not s.get("packing") and "error" not in s:
            p = _default_attn(settings, s["model"], s["K"], s["zero_stage"])
            if p:
                ratios[f"{s['model']} K={s['K']} ZeRO-{s['zero_stage']}"] = p["lists_per_s"] / s["lists_per_s"]
    data.setdefault("mfu", {})["packed_over_unpacked_lists_per_s"] = ratios
    for s in settings:  # each lipo setting against the ceiling of its model and K
        c = _find(settings, kind="ceiling", model=s.get("model"), K=s.get("K"))
        if s.get("kind") == "lipo" and c and s.get("mfu") and c.get("mfu"):
            s["mfu_over_ceiling"] = s["mfu"] / c["mfu"]
    out.append(_target("packed / unpacked lists/s, worst over all K", min(ratios.values(), default=None), 1.0))
    k8 = [v for key, v in ratios.items() if " K=8 " in key]
    out.append(_target("packed / unpacked lists/s, worst at K=8", min(k8, default=None), 2.0))
    k2 = data.get("trl", {}).get("k2")
    out.append(_target("lipo / TRL tokens/s at K=2", k2.get("ratio_lipo_vs_trl_tokens_per_s")
                       if isinstance(k2, dict) else None, 1.2))
    lipo_gen = data.get("generation", {}).get("samplers", {}).get("lipo", {})
    out.append(_target("lipo >= 1.0x generate tokens/s (0.48B bf16, 256 rows)", lipo_gen.get("ratio_vs_generate"),
                       1.0))
    return out


def _f(v, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def mfu_rows(data: dict) -> list[list]:
    rows = []
    for s in data.get("mfu", {}).get("settings", []):
        layout = "ceiling (plain LM)" if s.get("kind") == "ceiling" else ("packed" if s.get("packing") else "unpacked")
        stage = "-" if s.get("kind") == "ceiling" else s.get("zero_stage", s.get("stage"))
        if "error" in s:
            rows.append([s.get("model"), s.get("K", s.get("k")), layout, stage, "-", "error", "", "", "", "", "", ""])
            continue
        rows.append([s["model"], s["K"], layout, stage, s.get("attention", "sdpa"), _f(s["step_s_median"]),
                     _f(s["lists_per_s"], ".1f"), f"{s['tokens_per_s']:,.0f}",
                     "-" if s.get("mfu") is None else f"{100 * s['mfu']:.1f}%", _f(s.get("mfu_over_ceiling"), ".2f"),
                     _f(s.get("peak_allocated_gib"), ".1f"), _f(s.get("collate_s_median"), ".3f")])
    return rows


def generation_md(gen: dict) -> list[str]:
    """Sampled tokens/s per sampler (and the greedy check); nothing if the part did not run."""
    samplers = gen.get("samplers", {})
    if not samplers:
        return []
    rows = [[name, s.get("new_tokens"), f"{s['tokens_per_s']:,.0f}",
             "-" if s.get("ratio_vs_generate") is None else f"{s['ratio_vs_generate']:.2f}x"]
            for name, s in samplers.items()]
    head = (f"Sampling, {gen.get('model')} {gen.get('dtype')}: {gen.get('prompts')} prompts x K={gen.get('K')} = "
            f"{gen.get('rows')} rows, {gen.get('prompt_tokens')}-token prompts, temperature {gen.get('temperature')}, "
            f"top-p {gen.get('top_p')}, EOS off; wall-clock medians of alternated calls (`lipo before`: fewer new "
            f"tokens, not compared):")
    out = [head, table(["sampler", "new tokens", "tokens/s", "/ generate"], rows)]
    checks = [g for g in (gen.get("greedy"), gen.get("greedy_fp32")) if g]
    if checks:
        out.append("Greedy lipo vs greedy generate: " + "; ".join(
            f"{100 * g['equal_fraction']:.1f}% equal tokens ({g['dtype']}, {g['rows']} rows x {g['new_tokens']})"
            for g in checks) + ".")
    if gen.get("skipped"):
        out.append(f"Sampling skipped: {'; '.join(gen['skipped'])}")
    return out


def markdown(data: dict) -> str:
    m = data.get("machine", {})
    parts = [f"{data.get('date', '')}; {m.get('device', '?')}, torch {m.get('torch', '?')}, transformers "
             f"{m.get('transformers', '?')}, deepspeed {m.get('deepspeed', '?')}; "
             f"wall {_f(data.get('wall_s'), '.0f')} s"
             f"{' (SMOKE: tiny model on CPU, numbers mean nothing)' if data.get('smoke') else ''}.",
             "MFU = 6 x matmul params x processed tokens/s / dense bf16 peak; lipo steps carry reference log-probs "
             "(no reference forward). Step times include the collate (last column: its share).",
             table(["model", "K", "layout", "ZeRO", "attention", "step s", "lists/s", "tokens/s", "MFU",
                    "MFU / ceiling", "peak GiB", "collate s"], mfu_rows(data))]
    par = data.get("parity", {})
    prow = [[c["check"], _f(c.get("max_abs_diff_logps")), _f(c.get("tol_logps")), _f(c.get("grad_rel_diff")),
             _f(c.get("tol_grad")), "ok" if c.get("ok") else "**FAIL**"] for c in par.get("checks", [])]
    parts += ["Parity, packed vs unpacked (summed log-probs of 128 tokens; gradient relative L2):",
              table(["check", "max abs diff", "tol", "grad rel diff", "tol", ""], prow)]
    parts += [f"Skipped: {'; '.join(par.get('skipped', []) + data.get('mfu', {}).get('skipped', []))}"] \
        if par.get("skipped") or data.get("mfu", {}).get("skipped") else []
    trl = data.get("trl", {})
    if trl.get("status") == "unavailable":
        parts.append(f"TRL: unavailable ({trl.get('reason')}).")
    else:
        k2, k8 = trl.get("k2"), trl.get("k8")
        if isinstance(k2, dict):
            parts.append(f"TRL {trl.get('trl_version')} K=2: lipo {k2['lipo']['tokens_per_s']:,.0f} vs TRL "
                         f"{k2['trl']['tokens_per_s']:,.0f} pair tokens/s "
                         f"({k2['ratio_lipo_vs_trl_tokens_per_s']:.2f}x).")
        if isinstance(k8, dict):
            parts.append(f"K=8 all-pairs supervision: lipo {k8['lipo']['supervised_pairs_per_s']:,.0f} vs TRL "
                         f"{k8['trl']['supervised_pairs_per_s']:,.0f} pairs/s "
                         f"({k8['ratio_lipo_vs_trl_pairs_per_s']:.1f}x).")
    parts += generation_md(data.get("generation", {}))
    verdict = {True: "pass", False: "miss", None: "not measured"}
    trow = [[t["target"], _f(t["value"]), t["threshold"], verdict[t["pass"]]] for t in data.get("targets", [])]
    parts += ["Targets:", table(["target", "value", "threshold", ""], trow)]
    if data.get("error"):
        parts.append(f"**Errors:** {data['error']}")
    return "\n\n".join(parts) + "\n"


def update_docs(doc: Path, md: str) -> None:
    """Put `md` between the markers in `doc`; without markers, they replace the body of the "## GPU suite" section
    (its heading stays where it is)."""
    text = doc.read_text(encoding="utf-8")
    block = f"{BEGIN}\n\n{md.strip()}\n\n{END}"
    if BEGIN in text and END in text:
        new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        m = re.search(r"^## GPU (check|suite)[^\n]*\n", text, flags=re.M)
        if m is None:
            new = text.rstrip() + "\n\n## GPU suite (`benchmarks/gpu_check.sh`)\n\n" + block + "\n"
        else:
            nxt = re.search(r"^## ", text[m.end():], flags=re.M)
            tail = text[m.end() + nxt.start():] if nxt else ""
            new = text[:m.end()] + "\n" + block + "\n" + ("\n" + tail if tail else "")
    doc.write_text(new, encoding="utf-8")
