"""`lipo import`: pairs (TRL / Anthropic HH), UltraFeedback and ranked replies (OpenAssistant) -> valid list files.

Every test writes a small input file, imports it, and reads the output back with `read_lists` (the reader training
uses), so "valid" means exactly what training accepts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lipo.data.importers import import_file
from lipo.data.readers import read_lists
from lipo.data.records import LIST_SCHEMA
from lipo.errors import DataError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def imported(tmp_path: Path, fmt: str, rows: list, **kwargs) -> tuple[list[dict], object]:
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    report = import_file(fmt, str(src), str(tmp_path / "out.parquet"), quiet=True, **kwargs)
    table, _ = read_lists([tmp_path / "out.parquet"])
    return table.to_pylist(), report


def test_pairs_trl_standard_conversational_implicit_and_hh(tmp_path):
    rows = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 9.0, "score_rejected": 2},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
        {"chosen": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
         "rejected": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Rome"}]},
        {"chosen": "\n\nHuman: Tell a joke.\n\nAssistant: Why did the chicken... \n",
         "rejected": "\n\nHuman: Tell a joke.\n\nAssistant: No."},
    ]
    lists, report = imported(tmp_path, "pairs", rows)
    assert report.read.rows_valid == 4 and report.read.rows_skipped == 0
    assert all(r["labels"] == [1.0, 0.0] for r in lists)
    assert lists[0]["prompt"] == "2+2?" and lists[0]["responses"] == ["4", "5"] and lists[0]["rewards"] == [9.0, 2.0]
    assert lists[1]["prompt_messages"] == [{"role": "user", "content": "Hi"}]
    assert lists[1]["responses"] == ["Hello!", "Go away."] and lists[1]["rewards"] is None
    assert lists[2]["prompt_messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert lists[2]["responses"] == ["Paris", "Rome"]
    assert lists[3]["prompt"] == "\n\nHuman: Tell a joke.\n\nAssistant:"
    assert lists[3]["responses"] == ["Why did the chicken...", "No."]


def test_pairs_bad_rows_are_counted_and_skipped_or_raise(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    rows = [good, {"prompt": "p", "chosen": "a"}, {"prompt": "q", "chosen": "same", "rejected": "same"},
            {"prompt": "", "chosen": "a", "rejected": "b"},
            {"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "\n\nHuman: y\n\nAssistant: b"}]
    lists, report = imported(tmp_path, "pairs", rows)
    assert len(lists) == 1 and report.read.rows_skipped == 4
    assert report.read.skipped_by_reason == {"rejected: missing": 1, "responses: identical": 1, "prompt: empty": 1,
                                             "rejected: other prompt": 1}
    with pytest.raises(DataError, match=r"in\.jsonl: row 2: field 'rejected': missing"):
        imported(tmp_path, "pairs", rows, on_invalid="error")


def test_ultrafeedback_ratings_become_minmax_labels(tmp_path):
    row = {"source": "evol", "instruction": "Name a color.", "completions": [
        {"model": "a", "response": "Red.", "overall_score": 8.0, "fine-grained_score": 4.5},
        {"model": "b", "response": "Blue!", "overall_score": 6.0, "fine-grained_score": 3.0},
        {"model": "c", "response": "   ", "overall_score": 9.0},
        {"model": "d", "response": "Seven.", "overall_score": "N/A", "fine-grained_score": 1.0},
        {"model": "e", "response": "Green.", "overall_score": 4.0, "fine-grained_score": 2.0},
    ]}
    only_fine = {"instruction": "Say hi.", "completions": [{"response": "hi", "fine-grained_score": 2.0},
                                                           {"response": "hello", "fine-grained_score": 2.0}]}
    lists, report = imported(tmp_path, "ultrafeedback", [row, only_fine])
    first = lists[0]
    assert first["prompt"] == "Name a color." and first["responses"] == ["Red.", "Blue!", "Green."]
    assert first["rewards"] == [8.0, 6.0, 4.0]
    assert first["labels"] == [1.0, 0.5, 0.0]  # (8-4)/(8-4), (6-4)/(8-4), (4-4)/(8-4)
    assert lists[1]["labels"] == [0.5, 0.5]  # equal ratings: a tie, not an error
    assert report.left_out == {"no response": 1, "no numeric rating": 1}


def test_ultrafeedback_too_few_rated_completions(tmp_path):
    rows = [{"instruction": "x", "completions": [{"response": "a", "overall_score": 3}]},
            {"instruction": "y", "completions": [{"response": "a", "overall_score": 3},
                                                 {"response": "b", "overall_score": 5}]}]
    lists, report = imported(tmp_path, "ultrafeedback", rows)
    assert len(lists) == 1 and lists[0]["labels"] == [0.0, 1.0]
    assert report.read.skipped_by_reason == {"completions: too few rated": 1}


def test_ranked_grouped_rows_get_rank_labels(tmp_path):
    rows = [{"id": "q1", "prompt": "Best fruit?", "replies": [
        {"text": "Banana", "rank": 2}, {"text": "Apple", "rank": 0}, {"text": "Cherry", "rank": 1},
        {"text": "Durian", "rank": None}]}]
    lists, report = imported(tmp_path, "ranked", rows)
    # sorted best first; K = 3 -> psi = (3 - r) / 2 for 1-based ranks r = 1, 2, 3
    assert lists[0]["id"] == "q1" and lists[0]["responses"] == ["Apple", "Cherry", "Banana"]
    assert lists[0]["labels"] == [1.0, 0.5, 0.0]
    assert report.left_out == {"no rank": 1}


def test_ranked_openassistant_message_tree(tmp_path):
    msgs = [
        {"message_id": "m0", "parent_id": None, "role": "prompter", "text": "Write a haiku.", "rank": None},
        {"message_id": "a1", "parent_id": "m0", "role": "assistant", "text": "Leaves fall...", "rank": 1},
        {"message_id": "a2", "parent_id": "m0", "role": "assistant", "text": "Snow on pines...", "rank": 0},
        {"message_id": "m1", "parent_id": "a2", "role": "prompter", "text": "Another one?", "rank": None},
        {"message_id": "b1", "parent_id": "m1", "role": "assistant", "text": "Frogs leap.", "rank": 0},
        {"message_id": "b2", "parent_id": "m1", "role": "assistant", "text": "Rain.", "rank": 0},
        {"message_id": "b3", "parent_id": "m1", "role": "assistant", "text": "Moon.", "rank": 1},
        {"message_id": "c1", "parent_id": "gone", "role": "assistant", "text": "orphan", "rank": 0},
    ]
    lists, report = imported(tmp_path, "ranked", msgs)
    by_id = {r["id"]: r for r in lists}
    assert set(by_id) == {"m0", "m1"}
    assert by_id["m0"]["prompt"] == "Write a haiku." and by_id["m0"]["responses"] == ["Snow on pines...",
                                                                                       "Leaves fall..."]
    assert by_id["m0"]["labels"] == [1.0, 0.0]
    assert by_id["m1"]["prompt_messages"] == [{"role": "user", "content": "Write a haiku."},
                                              {"role": "assistant", "content": "Snow on pines..."},
                                              {"role": "user", "content": "Another one?"}]
    # ranks 0, 0, 1 -> 1-based ranks 1.5, 1.5, 3 (ties share their mean) -> psi = (3 - r) / 2 = .75, .75, 0
    assert by_id["m1"]["labels"] == [0.75, 0.75, 0.0]
    assert report.left_out == {"broken thread": 1}


def test_parquet_input_and_output_schema(tmp_path):
    src = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "chosen": "a", "rejected": "b", "other": 1}]), src)
    import_file("pairs", str(src), str(tmp_path / "out.parquet"), quiet=True)
    table, _ = read_lists([tmp_path / "out.parquet"])
    assert table.num_rows == 1 and table.to_pylist()[0]["responses"] == ["a", "b"]
    assert pq.read_schema(tmp_path / "out.parquet").equals(LIST_SCHEMA)


@pytest.mark.parametrize("content,needle", [
    (b"", "has no rows"),
    (b'{"prompt": "p", "chosen": "a", "rejected": "b\xff"}\n', "not valid UTF-8"),
])
def test_empty_file_and_bad_bytes(tmp_path, content, needle):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    with pytest.raises(DataError, match=needle):
        import_file("pairs", str(src), str(tmp_path / "out.parquet"), quiet=True)


def test_unknown_format_and_bad_output(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="unknown format 'dpo'"):
        import_file("dpo", str(src), str(tmp_path / "out.parquet"))
    with pytest.raises(DataError, match=r"\.parquet"):
        import_file("pairs", str(src), str(tmp_path / "out.jsonl"))


def test_cli_import(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    out = tmp_path / "out.parquet"
    proc = subprocess.run([sys.executable, "-m", "lipo.cli", "import", "--format", "pairs", str(src), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 lists" in proc.stdout and out.is_file()
    bad = subprocess.run([sys.executable, "-m", "lipo.cli", "import", "--format", "nope", str(src), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "lipo: error: --format: unknown format 'nope'" in bad.stderr


def conversation(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def test_pairs_ultrafeedback_binarized_conversations(tmp_path):
    """`HuggingFaceH4/ultrafeedback_binarized` rows: a string prompt and chosen/rejected as whole conversations.
    The list's prompt becomes the conversation before the reply (system message and earlier turns included)."""
    sys_ = ("system", "Be brief.")
    rows = [
        {"prompt": "Name a prime.", "prompt_id": "x1", "score_chosen": 8.5, "score_rejected": 3.0,
         "chosen": conversation(("user", "Name a prime."), ("assistant", "7")),
         "rejected": conversation(("user", "Name a prime."), ("assistant", "9")),
         "messages": conversation(("user", "Name a prime."), ("assistant", "7"))},
        # multi-turn with a system message: a string prompt is the last user message
        {"prompt": "And an even one?",
         "chosen": conversation(sys_, ("user", "Name a prime."), ("assistant", "7"), ("user", "And an even one?"),
                                ("assistant", "2")),
         "rejected": conversation(sys_, ("user", "Name a prime."), ("assistant", "7"), ("user", "And an even one?"),
                                  ("assistant", "4"))},
        # the prompt as messages equal to the prefix (surrounding whitespace ignored)
        {"prompt": conversation(sys_, ("user", "Say hi. ")),
         "chosen": conversation(sys_, ("user", "Say hi."), ("assistant", "Hi!")),
         "rejected": conversation(sys_, ("user", "Say hi."), ("assistant", "No."))},
    ]
    lists, report = imported(tmp_path, "pairs", rows)
    assert report.read.rows_valid == 3 and report.read.rows_skipped == 0
    assert lists[0]["prompt"] is None and lists[0]["prompt_messages"] == conversation(("user", "Name a prime."))
    assert lists[0]["responses"] == ["7", "9"] and lists[0]["rewards"] == [8.5, 3.0]
    assert lists[1]["prompt_messages"] == conversation(sys_, ("user", "Name a prime."), ("assistant", "7"),
                                                       ("user", "And an even one?"))
    assert lists[1]["responses"] == ["2", "4"] and lists[1]["rewards"] is None
    assert lists[2]["prompt_messages"] == conversation(sys_, ("user", "Say hi."))
    assert lists[2]["responses"] == ["Hi!", "No."]


def test_pairs_prompt_mismatch_is_an_error_naming_file_row_and_field(tmp_path):
    good = {"prompt": "A?", "chosen": conversation(("user", "A?"), ("assistant", "a")),
            "rejected": conversation(("user", "A?"), ("assistant", "b"))}
    other_user = {**good, "rejected": conversation(("user", "B?"), ("assistant", "b"))}
    no_system = {"prompt": conversation(("user", "A?")),
                 "chosen": conversation(("system", "S"), ("user", "A?"), ("assistant", "a")),
                 "rejected": conversation(("system", "S"), ("user", "A?"), ("assistant", "b"))}
    ends_with_user = {**good, "chosen": conversation(("user", "A?"))}
    lists, report = imported(tmp_path, "pairs", [good, other_user, no_system, ends_with_user])
    assert len(lists) == 1
    assert report.read.skipped_by_reason == {"rejected: prompt mismatch": 1, "chosen: prompt mismatch": 1,
                                             "chosen: bad conversation": 1}
    assert report.read.first_errors[0].endswith(
        "in.jsonl: row 2: field 'rejected': its last user message 'B?' does not match 'prompt' 'A?'")
    assert "row 3: field 'chosen': its 2 messages before the last reply do not match the 1 messages of 'prompt'" \
        in report.read.first_errors[1]
    assert "row 4: field 'chosen[0].role': the last message must be the assistant's reply, got 'user'" \
        in report.read.first_errors[2]
    with pytest.raises(DataError, match=r"in\.jsonl: row 2: field 'rejected': its last user message"):
        imported(tmp_path, "pairs", [good, other_user], on_invalid="error")


def test_openai_content_parts_become_text_and_other_parts_are_errors(tmp_path):
    def parts(*texts):
        return [{"type": "text", "text": t} for t in texts]

    rows = [
        {"prompt": [{"role": "user", "content": parts("Translate: ", "chat")}],
         "chosen": [{"role": "assistant", "content": parts("Plaudern")}],
         "rejected": [{"role": "assistant", "content": "Katze"}]},
        {"chosen": [{"role": "user", "content": parts("Q")}, {"role": "assistant", "content": parts("a", "b")}],
         "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": parts("c")}]},
        {"prompt": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                 {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]}],
         "chosen": "a cat", "rejected": "a dog"},
        {"prompt": "Q", "chosen": conversation(("user", "Q"), ("assistant", "a")),
         "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": [{"type": "input_audio"}]}]},
    ]
    lists, report = imported(tmp_path, "pairs", rows)
    assert len(lists) == 2
    assert lists[0]["prompt_messages"] == [{"role": "user", "content": "Translate: chat"}]  # text parts concatenated
    assert lists[0]["responses"] == ["Plaudern", "Katze"]
    assert lists[1]["prompt_messages"] == [{"role": "user", "content": "Q"}] and lists[1]["responses"] == ["ab", "c"]
    assert report.read.first_errors == [
        f"{tmp_path / 'in.jsonl'}: row 3: field 'prompt[0].content[1].type': only text content parts can be read, "
        "got 'image_url' (lipo's models read text only)",
        f"{tmp_path / 'in.jsonl'}: row 4: field 'rejected[1].content[0].type': only text content parts can be read, "
        "got 'input_audio' (lipo's models read text only)"]


def test_pairs_scores_that_are_not_finite_numbers_are_counted_not_dropped_silently(tmp_path):
    """Issue 16, point 9: a NaN score_chosen used to drop the row's rewards without a count."""
    rows = [{"prompt": "a?", "chosen": "y", "rejected": "n", "score_chosen": float("nan"), "score_rejected": 2.0},
            {"prompt": "b?", "chosen": "y", "rejected": "n", "score_chosen": 7.0, "score_rejected": float("-inf")},
            {"prompt": "c?", "chosen": "y", "rejected": "n", "score_chosen": "8"},
            {"prompt": "d?", "chosen": "y", "rejected": "n", "score_chosen": 9.0, "score_rejected": 1},
            {"prompt": "e?", "chosen": "y", "rejected": "n"},  # no scores at all: nothing dropped
            {"prompt": "", "chosen": "y", "rejected": "n", "score_chosen": float("nan")}]  # skipped row: not counted
    lists, report = imported(tmp_path, "pairs", rows)
    assert [r["rewards"] for r in lists] == [None, None, None, [9.0, 1.0], None]
    assert [r["labels"] for r in lists] == [[1.0, 0.0]] * 5  # the preference is kept
    assert report.values_left_out == {"score_chosen: NaN": 1, "score_rejected: partner unusable": 1,
                                      "score_chosen: partner unusable": 1, "score_rejected: -inf": 1,
                                      "score_chosen: a string": 1}
    assert report.read.skipped_by_reason == {"prompt: empty": 1}
    assert ("; scores left out (lists kept without rewards): score_chosen: NaN 1, score_chosen: a string 1, "
            "score_chosen: partner unusable 1, score_rejected: -inf 1, score_rejected: partner unusable 1"
            ) in report.summary()


def test_nan_ranks_say_nan_and_broken_parents_are_errors(tmp_path):
    """Issue 16, point 13: a NaN rank was reported as "must be a number, got float"."""
    rows = [{"prompt": "Best?", "replies": [{"text": "a", "rank": 0}, {"text": "b", "rank": float("nan")}]}]
    with pytest.raises(DataError) as exc:
        imported(tmp_path, "ranked", rows, on_invalid="error")
    assert str(exc.value) == (f"{tmp_path / 'in.jsonl'}: row 1: field 'replies[1].rank': must be a finite number, "
                              "got NaN")
    rows[0]["replies"][1]["rank"] = "first"
    with pytest.raises(DataError, match=r"field 'replies\[1\]\.rank': must be a finite number, got a string$"):
        imported(tmp_path, "ranked", rows, on_invalid="error")
    rows[0]["replies"][1] = {"text": 42, "rank": 1}  # a reply whose text is not text: named, not "missing"
    with pytest.raises(DataError, match=r"field 'replies\[1\]\.text': must be a string, got int$"):
        imported(tmp_path, "ranked", rows, on_invalid="error")
    msgs = [{"message_id": "m0", "parent_id": None, "role": "prompter", "text": "Hi", "rank": None},
            {"message_id": "a1", "parent_id": 7, "role": "assistant", "text": "Yo", "rank": 0}]
    with pytest.raises(DataError, match=r"in\.jsonl: row 2: field 'parent_id': must be a string or null, got int$"):
        imported(tmp_path, "ranked", msgs, on_invalid="error")


def test_chat_roles_outside_the_four_are_errors_naming_the_field(tmp_path):
    """Issue 16, point 13: a role of "robot" was accepted."""
    rows = [{"prompt": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "beep"},
                        {"role": "user", "content": "and?"}], "chosen": "y", "rejected": "n"}]
    with pytest.raises(DataError) as exc:
        imported(tmp_path, "pairs", rows, on_invalid="error")
    assert str(exc.value) == (f"{tmp_path / 'in.jsonl'}: row 1: field 'prompt[1].role': must be one of system, user, "
                              "assistant, tool, got 'robot'")
