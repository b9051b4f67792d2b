"""XCOPA and XWinograd requests (native and lm-evaluation-harness's), XCOPA scores against a
direct computation with the model, MGSM answer extraction, exact match and prompts."""

from __future__ import annotations

import json

import pytest
import torch

from bloomchat.eval.backends import HFBackend, Reply
from bloomchat.eval.mc import MCTask, convert_xwinograd, load_mc
from bloomchat.eval.mgsm import MGSMTask, extract_answer, load_exemplars, load_mgsm, same_number
from bloomchat.eval.xcopa import convert_xcopa


# --------------------------------------------------------------------------------- XCOPA
def _lm_eval_xcopa(doc: dict, connector: dict) -> list[tuple[str, str]]:
    """lm-evaluation-harness's XCOPA requests, transcribed from lm_eval 0.4.13:
    tasks/xcopa/utils.py `doc_to_text` (premise.strip()[:-1] + f" {conn}") and `doc_to_choice`
    (`convert_choice`: first character lower-cased), joined by api/task.py `construct_requests`
    as (ctx, f"{target_delimiter}{cont}") with the default target_delimiter " "."""
    ctx = doc["premise"].strip()[:-1] + f" {connector[doc['question']]}"
    return [(ctx, " " + c[0].lower() + c[1:]) for c in (doc["choice1"], doc["choice2"])]


# the words of lm_eval 0.4.13 tasks/xcopa/utils.py doc_to_text_zh / _th / _et
LM_EVAL_CONNECTORS = {"zh": {"cause": "因为", "effect": "所以"}, "th": {"cause": "เพราะ", "effect": "ดังนั้น"},
                      "et": {"cause": "sest", "effect": "seetõttu"}}


def test_xcopa_requests_native_and_lm_eval(tmp_path):
    f = tmp_path / "val.zh.jsonl"
    rows = [{"premise": "那人打开水龙头。", "choice1": "厕所里满是水。", "choice2": "水从水龙头喷口流出。",
             "question": "effect", "label": 1, "idx": 0, "changed": False}]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    native = convert_xcopa(f)[0]
    assert native["lang"] == "zh" and native["label"] == 1
    assert native["context"] == "那人打开水龙头所以"
    assert native["choices"] == ["厕所里满是水。", "水从水龙头喷口流出。"]
    lm = convert_xcopa(f, form="lm-eval")[0]
    assert [(lm["context"], c) for c in lm["choices"]] == _lm_eval_xcopa(rows[0], LM_EVAL_CONNECTORS["zh"])
    assert lm["context"] == "那人打开水龙头 所以"
    # Thai premises have no full stop: native keeps the last letter, lm-eval's [:-1] drops it
    th = tmp_path / "val.th.jsonl"
    trow = {"premise": "ผู้ชายเปิดก๊อกนํ้า", "choice1": "ห้องนํ้าเต็มไปด้วยนํ้า", "choice2": "นํ้าไหลออกมาจากพวย",
            "question": "effect", "label": 1, "idx": 0}
    th.write_text(json.dumps(trow, ensure_ascii=False) + "\n", encoding="utf-8")
    assert convert_xcopa(th)[0]["context"] == "ผู้ชายเปิดก๊อกนํ้า ดังนั้น"
    assert convert_xcopa(th, form="lm-eval")[0]["context"] == trow["premise"][:-1] + " ดังนั้น"


def test_xcopa_shared_rows_match_lm_eval_requests(shared_data):
    folder = shared_data("xcopa")
    for lang in ("zh", "th", "et"):
        path = folder / f"val.{lang}.jsonl"
        docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:5]]
        items = load_mc(path, "auto", None, "lm-eval")[:5]
        for doc, it in zip(docs, items):
            assert [(it["context"], c) for c in it["choices"]] == _lm_eval_xcopa(doc, LM_EVAL_CONNECTORS[lang])
            assert it["label"] == doc["label"] and it["lang"] == lang


def test_xcopa_folder_has_eleven_languages(shared_data):
    items = load_mc(shared_data("xcopa"))
    per = {}
    for it in items:
        per[it["lang"]] = per.get(it["lang"], 0) + 1
    assert per == {lg: 450 for lg in ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh")}
    assert len({it["id"] for it in items}) == len(items)


def _loglik_by_hand(model, tok, ctx: str, cont: str) -> float:
    c = tok(ctx, add_special_tokens=False)["input_ids"] or [tok.bos_token_id]
    t = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([c + t])).logits[0].float(), -1)
    return sum(float(logp[len(c) - 1 + j, t[j]]) for j in range(len(t)))


@pytest.mark.parametrize("form", ["native", "lm-eval"])
def test_xcopa_scores_equal_a_direct_computation(micro_model_dir, tmp_path, form):
    """The task's per-option log-likelihoods and choices against the model run by hand on the
    requests built independently from the raw rows."""
    f = tmp_path / "test.et.jsonl"
    rows = [
        {"premise": "Ese oli mullikilesse mässitud.", "choice1": "See oli õrn.", "choice2": "See oli väike.",
         "question": "cause", "label": 0, "idx": 0},
        {"premise": "Mees avas kraani.", "choice1": "Tualett täitus veega.", "choice2": "Kraanist voolas vett.",
         "question": "effect", "label": 1, "idx": 1},
        {"premise": "Tüdruk leidis oma helvestest putuka.", "choice1": "Ta valas piima kaussi.",
         "choice2": "Ta kaotas isu.", "question": "effect", "label": 1, "idx": 2},
    ]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task = MCTask(str(f), mc_format=form)
    backend = HFBackend(str(micro_model_dir))
    recs = task.run_batch(backend, task.examples())
    model, tok = backend._load()
    correct = 0
    for row, rec in zip(rows, recs):
        conn = LM_EVAL_CONNECTORS["et"][row["question"]]
        if form == "lm-eval":
            reqs = _lm_eval_xcopa(row, LM_EVAL_CONNECTORS["et"])
        else:  # Estonian is written with spaces: premise without its full stop, connective, alternative
            reqs = [(row["premise"][:-1] + " " + conn, " " + c[0].lower() + c[1:]) for c in (row["choice1"], row["choice2"])]
        want = [_loglik_by_hand(model, tok, c, x) for c, x in reqs]
        assert rec["logprobs"] == pytest.approx(want, abs=1e-4)
        pick = max(range(2), key=lambda i: (want[i], -i))
        assert rec["pred"]["sum"] == pick
        correct += pick == row["label"]
    summary = task.summarize(recs, bootstrap=0)
    assert summary["et"]["acc_sum"]["value"] == pytest.approx(correct / 3)


# ----------------------------------------------------------------------------- XWinograd
def _lm_eval_xwinograd(doc: dict) -> list[tuple[str, str]]:
    """lm-evaluation-harness's XWinograd requests, transcribed from lm_eval 0.4.13
    tasks/xwinograd/utils.py: `doc_to_choice` (contexts sentence[:idx] + option, idx = the
    index of "_") and `doc_to_target` (sentence[idx + 1:].strip()), joined in api/task.py
    `construct_requests` (multiple-input mode) as (context, f"{target_delimiter}{cont}"), " "."""
    idx = doc["sentence"].index("_")
    cont = doc["sentence"][idx + 1:].strip()
    return [(doc["sentence"][:idx] + opt, " " + cont) for opt in (doc["option1"], doc["option2"])]


# Rows of the XWinograd release as the HF copy lm-eval reads holds them (pronoun -> "_"), typed
# from the TSV's sentence and candidates columns.
XWINO_ROWS = [
    ("zh\toriginal\tThe trophy doesn't fit into the brown suitcase because it's too small.\t"
     "奖杯无法放进到棕色的箱子里，因为它太小了。 \t"
     '["奖杯", "无法放进到棕色的", "箱子", "里，因", "为", "它", "太小了。 "]\t["它", [5, 6], ["它"]]\t'
     '[["箱子", [2, 3], ["箱子"], true], ["奖杯", [0, 1], ["奖杯"], false]]',
     {"sentence": "奖杯无法放进到棕色的箱子里，因为_太小了。", "option1": "箱子", "option2": "奖杯"}),
    ("jp\ttest\tThe sniper shot the terrorist because he had orders.\t狙撃兵はテロリストを撃った。彼は命令されたからだ。\t"
     '["狙撃兵", "は", "テロリスト", "を撃った。", "彼", "は命令されたからだ。"]\t["彼", [4, 5], ["彼"]]\t'
     '[["狙撃兵", [0, 1], ["狙撃兵"], true], ["テロリスト", [2, 3], ["テロリスト"], false]]',
     {"sentence": "狙撃兵はテロリストを撃った。_は命令されたからだ。", "option1": "狙撃兵", "option2": "テロリスト"}),
    ("en\toriginal\t?\tThe city councilmen refused the demonstrators a permit because they feared violence.\t"
     '["The", "city", "councilmen", "refused", "the", "demonstrators", "a", "permit", "because", "they", "feared", '
     '"violence", "."]\t["they", [9, 10], ["they"]]\t[["The city councilmen", [0, 3], ["The", "city", "councilmen"], '
     'true], ["the demonstrators", [4, 6], ["the", "demonstrators"], false]]',
     {"sentence": "The city councilmen refused the demonstrators a permit because _ feared violence.",
      "option1": "The city councilmen", "option2": "the demonstrators"}),
]


def test_xwinograd_lm_eval_form_matches_lm_eval_requests(tmp_path):
    f = tmp_path / "xw.tsv"
    f.write_text("".join(r + "\n" for r, _ in XWINO_ROWS), encoding="utf-8")
    lm = convert_xwinograd(f, form="lm-eval")
    native = convert_xwinograd(f)
    for (_, doc), it, nat in zip(XWINO_ROWS, lm, native):
        assert [(c, x) for c, x in zip(it["context"], it["choices"])] == _lm_eval_xwinograd(doc)
        # the faithful default keeps the text as written: no space after the candidate in zh/ja
        assert nat["context"] == it["context"]
        assert nat["choices"][0] == doc["sentence"][doc["sentence"].index("_") + 1:]
        assert (nat["choices"][0] != it["choices"][0]) is (nat["lang"] in ("zh", "ja"))
    assert lm[0]["choices"][0] == " 太小了。"
    assert native[2]["choices"][0] == " feared violence." == lm[2]["choices"][0]


def test_xwinograd_lm_eval_form_on_shared_rows_differs_only_in_the_space(shared_data):
    items_native = load_mc(shared_data("xwinograd", "xwinograd.tsv"), "xwinograd")
    items_lm = load_mc(shared_data("xwinograd", "xwinograd.tsv"), "xwinograd", None, "lm-eval")
    changed = {}
    for a, b in zip(items_native, items_lm):
        if isinstance(a["context"], list):
            assert a["context"] == b["context"]
            assert b["choices"][0] == " " + a["choices"][0].strip()
        changed[a["lang"]] = changed.get(a["lang"], 0) + (a["choices"] != b["choices"])
    assert changed["zh"] > 0 and changed["ja"] > 0  # a space inserted where the text has none


# ---------------------------------------------------------------------------------- MGSM
@pytest.mark.parametrize("reply,want", [
    ("The answer is 11.", "11"),
    ("He earns 1,234 dollars in total. The answer is 1,234.", "1234"),
    ("The temperature drops to -5 degrees.", "-5"),
    ("So each costs 2.50 and the answer is 7.5.", "7.5"),
    ("No idea, sorry.", None),
    ("", None),
    ("3 apples and 4 pears make 7", "7"),
    ("答案是 18。", "18"),
    ("উত্তর হল ১২।", "12"),  # Bengali digits
    ("Total: $1,000,000.", "1000000"),
    ("The answer is 5, and 6 is wrong", "6"),  # the last number, whatever it is
])
def test_extract_answer(reply, want):
    assert extract_answer(reply) == want


@pytest.mark.parametrize("pred,gold,want", [
    ("2125", "2,125", True), ("3.0", "3", True), ("3.5", "3", False), (None, "3", False),
    ("-5", "-5", True), ("5", "-5", False), ("1234", "1,234", True), ("070", "70", True),
])
def test_same_number(pred, gold, want):
    assert same_number(pred, gold) is want


def test_mgsm_data_and_exemplars(shared_data):
    folder = shared_data("mgsm")
    ex = load_exemplars(folder)
    assert sorted(ex) == sorted(["bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"])
    assert all(len(v) == 8 for v in ex.values())
    assert ex["en"][0]["q"].startswith("Question: Roger has 5 tennis balls")
    assert ex["en"][0]["a"].endswith("The answer is 11.")
    items = load_mgsm(folder)
    assert len(items) == 11 * 175
    assert all(extract_answer(it["answer"]) is not None for it in items)
    zh = [it for it in items if it["lang"] == "zh"]
    assert zh[1]["answer"] == "70000"


class CannedReplies:
    """Replies per question text, and the chats it was asked (what the engine would get)."""

    name = "canned"

    def __init__(self, replies: dict[str, str]):
        self.replies, self.chats = replies, []

    def generate(self, chats, params):
        self.chats.extend(chats)
        return [Reply(text=self.replies[c[-1]["content"]], new_tokens=5) for c in chats]


def test_mgsm_task_prompts_and_accuracy(tmp_path):
    (tmp_path / "mgsm_en.tsv").write_text("What is 2 + 2?\t4\nHow many legs do 3 cats have?\t12\n"
                                          "A big sum?\t1,000\n", encoding="utf-8")
    (tmp_path / "mgsm_zh.tsv").write_text("二加三是多少？\t5\n", encoding="utf-8")
    ex = {"en": {str(i): {"q": f"Question: q{i}?", "a": f"Step-by-Step Answer: a{i}. The answer is {i}."}
                 for i in range(1, 9)},
          "zh": {str(i): {"q": f"问题：题{i}？", "a": f"逐步解答：答案是 {i}。"} for i in range(1, 9)}}
    (tmp_path / "exemplars.py").write_text(f'"""Prompts."""\nX = [1]\nMGSM_EXEMPLARS = {ex!r}\n', encoding="utf-8")
    be = CannedReplies({"Question: What is 2 + 2?": "2 + 2 = 4. The answer is 4.",
                        "Question: How many legs do 3 cats have?": "Each cat has 4 legs, 3 cats: 3 x 4 = 13.",
                        "Question: A big sum?": "The answer is 1,000.",
                        "问题：二加三是多少？": "我不知道。"})
    task = MGSMTask(str(tmp_path), shots=2)
    recs = task.run_batch(be, task.examples())
    chat = next(c for c in be.chats if c[-1]["content"] == "Question: What is 2 + 2?")
    assert chat == [{"role": "user", "content": "Question: q1?"},
                    {"role": "assistant", "content": "Step-by-Step Answer: a1. The answer is 1."},
                    {"role": "user", "content": "Question: q2?"},
                    {"role": "assistant", "content": "Step-by-Step Answer: a2. The answer is 2."},
                    {"role": "user", "content": "Question: What is 2 + 2?"}]
    by_id = {r["id"]: r for r in recs}
    assert [by_id[f"mgsm-en:{i}"]["correct"] for i in (1, 2, 3)] == [True, False, True]
    assert by_id["mgsm-zh:1"]["pred"] is None and not by_id["mgsm-zh:1"]["correct"]
    s = task.summarize(recs, bootstrap=0)
    assert s["en"]["exact_match"]["value"] == pytest.approx(2 / 3)
    assert s["zh"]["exact_match"]["value"] == 0 and s["zh"]["no_number"]["value"] == 1
    assert s["all"]["exact_match"]["value"] == pytest.approx(2 / 4)
    # 0-shot: the question alone, with the native question word
    be0 = CannedReplies(be.replies)
    t0 = MGSMTask(str(tmp_path), shots=0, langs=["zh"])
    t0.run_batch(be0, t0.examples())
    assert be0.chats == [[{"role": "user", "content": "问题：二加三是多少？"}]]


# --------------------------------------------------------------------------- subcommands
def test_eval_subcommands_model_named_compare_and_help(micro_model_dir, tmp_path, monkeypatch, capsys):
    """`eval run compare` evaluates a model directory called compare; `eval MODEL` stays a
    shorthand; each subcommand has its own --help; mgsm and xcopa run end to end."""
    import shutil

    from bloomchat.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copytree(micro_model_dir, tmp_path / "compare")
    (tmp_path / "val.zh.jsonl").write_text(json.dumps(
        {"premise": "那人打开水龙头。", "choice1": "厕所里满是水。", "choice2": "水从水龙头喷口流出。",
         "question": "effect", "label": 1, "idx": 0}, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "mgsm_en.tsv").write_text("What is 2 + 2?\t4\n", encoding="utf-8")
    common = ["-o", "run", "--no-progress", "--bootstrap", "0"]
    assert main(["eval", "run", "compare", "--task", "mc", "--data", "val.zh.jsonl", "--mc-format", "lm-eval",
                 *common]) == 0
    with pytest.raises(SystemExit) as e:  # `compare` is the subcommand here: it takes no --task
        main(["eval", "compare", "--task", "mgsm", "--data", "mgsm_en.tsv", *common])
    assert e.value.code == 2
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "compare"), "--task", "mgsm", "--data", "mgsm_en.tsv",
                 "--max-new-tokens", "4", *common, "-o", "run2"]) == 0  # the shorthand of `eval run`
    res = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert list(res["tasks"]) == ["mc-val.zh"] and res["model"]["model"] == "compare"
    assert res["tasks"]["mc-val.zh"]["config"]["mc_format"] == "lm-eval"
    res2 = json.loads((tmp_path / "run2" / "results.json").read_text(encoding="utf-8"))
    assert res2["tasks"]["mgsm-0shot"]["n_examples"] == 1
    for sub in ("run", "compare", "convert"):
        with pytest.raises(SystemExit) as e:
            main(["eval", sub, "--help"])
        assert e.value.code == 0
        assert f"bloomchat eval {sub}" in capsys.readouterr().out
