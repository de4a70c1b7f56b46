"""Loaders for the real datasets, on tiny hand-written files in the published CodeXGLUE formats."""
import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from telly import loaders
from telly.loaders import ClonePair, CodeDocRecord, CompletionRecord, DatasetUnavailable, LabelledProgram, NlCodePair

DATA = Path(__file__).parent / "data"


def sha256_of(*paths: Path, gz: bool = False) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    return digest.hexdigest()


def test_codesearchnet_codexglue_jsonl():
    records = loaders.load_codesearchnet(DATA / "codesearchnet", split="train", language="python")
    assert [r.name for r in records] == ["haversine", "slugify", "LRUCache.get"]
    first = records[0]
    assert isinstance(first, CodeDocRecord) and first.language == "python"
    assert first.path == "geo/distance.py" and first.code.startswith("def haversine(")
    assert first.docstring.startswith("Great-circle distance") and first.docstring_tokens[:2] == ("Great-circle", "distance")
    assert isinstance(first.code_tokens, tuple) and first.code_tokens[1] == "haversine"
    assert records.fingerprint == sha256_of(DATA / "codesearchnet/python/train.jsonl")
    assert records.describe() == {"dataset": "codesearchnet", "split": "train", "source": str(DATA / "codesearchnet"),
                                  "fingerprint": records.fingerprint, "size": 3}
    test = loaders.load_codesearchnet(DATA / "codesearchnet/python", split="test")
    assert [r.name for r in test] == ["read_lines"] and test.fingerprint != records.fingerprint


def test_codesearchnet_gz_shards_in_order_with_limit():
    shards = sorted((DATA / "codesearchnet/ruby/final/jsonl/train").glob("*.jsonl.gz"))
    records = loaders.load_codesearchnet(DATA / "codesearchnet", split="train", language="ruby")
    assert [r.name for r in records] == ["Rbkit::Strings.titleize", "Rbkit::Stack.peek", "Rbkit::Numbers.clamp"]
    assert {r.language for r in records} == {"ruby"}
    assert records.fingerprint == sha256_of(*shards, gz=True)
    first_two = loaders.load_codesearchnet(DATA / "codesearchnet", split="train", language="ruby", limit=2)
    assert list(first_two) == records[:2]
    assert first_two.fingerprint == sha256_of(shards[0], gz=True)  # only what was read
    assert loaders.load_codesearchnet(shards[1], language="ruby")[0].name == "Rbkit::Numbers.clamp"


def test_shards_sort_numerically(tmp_path):
    source = DATA / "codesearchnet/ruby/final/jsonl/train"
    target = tmp_path / "ruby/final/jsonl/train"
    target.mkdir(parents=True)
    shutil.copy(source / "ruby_train_0.jsonl.gz", target / "ruby_train_10.jsonl.gz")
    shutil.copy(source / "ruby_train_1.jsonl.gz", target / "ruby_train_2.jsonl.gz")
    names = [r.name for r in loaders.load_codesearchnet(tmp_path, language="ruby")]
    assert names[0] == "Rbkit::Numbers.clamp"  # from shard 2, before shard 10


def test_poj104():
    records = loaders.load_poj104(DATA / "poj104")
    assert [(r.label, r.index) for r in records] == [(1, 0), (1, 1), (2, 500), (2, 501)]
    assert isinstance(records[0], LabelledProgram) and "scanf" in records[0].code
    assert [r.label for r in loaders.load_poj104(DATA / "poj104", split="test")] == [98, 98]


def test_bigclonebench_pairs():
    records = loaders.load_bigclonebench(DATA / "bigclonebench")
    assert [(r.idx_a, r.idx_b, r.label) for r in records] == [
        ("13988825", "8660836", 1), ("13988825", "21955002", 0), ("1188160", "8660836", 0)]
    assert isinstance(records[0], ClonePair)
    assert "readFile" in records[0].code_a and "loadText" in records[0].code_b
    assert records.fingerprint == sha256_of(DATA / "bigclonebench/data.jsonl", DATA / "bigclonebench/train.txt")
    test = loaders.load_bigclonebench(DATA / "bigclonebench/data.jsonl", split="test", limit=1)
    assert [(r.idx_a, r.idx_b, r.label) for r in test] == [("8660836", "13988825", 1)]


def test_concode_valid_reads_dev():
    train = loaders.load_concode(DATA / "concode")
    assert len(train) == 2 and isinstance(train[0], NlCodePair)
    assert train[0].nl.startswith("returns the larger") and train[0].code.startswith("int function")
    valid = loaders.load_concode(DATA / "concode", split="valid")
    assert valid.split == "valid" and [r.code for r in valid] == ["void function ( String arg0 ) { this . name = arg0 ; }"]


def test_line_completion():
    records = loaders.load_line_completion(DATA / "line_completion")
    assert [r.next_line for r in records] == ["count ++ ;", "return null ;"]
    assert isinstance(records[0], CompletionRecord) and records[0].context.startswith("<s> package")


def test_loading_is_deterministic():
    first, second = (loaders.load_poj104(DATA / "poj104") for _ in range(2))
    assert first == second and first.fingerprint == second.fingerprint


def test_missing_split_names_what_was_looked_for():
    with pytest.raises(FileNotFoundError, match=r"codesearchnet \(valid split\): found none of .*python/valid\.jsonl.* under .*Expected layout"):
        loaders.load_codesearchnet(DATA / "codesearchnet", split="valid")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        loaders.load_poj104("./nowhere/poj104")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown split 'dev2'"):
        loaders.load_poj104(DATA / "poj104", split="dev2")
    with pytest.raises(ValueError, match="limit must be"):
        loaders.load_poj104(DATA / "poj104", limit=-1)
    with pytest.raises(ValueError, match="unknown language 'cobol'"):
        loaders.load_codesearchnet(DATA / "codesearchnet", language="cobol")


def _first_row(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[0])


CSN_ROW = _first_row(DATA / "codesearchnet/python/train.jsonl")
POJ_ROW = _first_row(DATA / "poj104/train.jsonl")


@pytest.mark.parametrize("loader, second_line, message", [
    (loaders.load_codesearchnet, '{"code": "def f(): pass", ', r"line 2: not valid JSON"),
    (loaders.load_codesearchnet, {k: v for k, v in CSN_ROW.items() if k != "docstring"}, r"line 2: missing field 'docstring'"),
    (loaders.load_codesearchnet, {**CSN_ROW, "code": 42}, r"line 2: field 'code': expected a string, got int 42"),
    (loaders.load_codesearchnet, {**CSN_ROW, "code_tokens": ["def", 3]}, r"line 2: field 'code_tokens': expected a list of strings"),
    (loaders.load_codesearchnet, [CSN_ROW], r"line 2: expected a JSON object, got list"),
    (loaders.load_poj104, {**POJ_ROW, "label": "twelve"}, r"line 2: field 'label': expected an integer.*'twelve'"),
    (loaders.load_poj104, {"code": "int main(){}", "label": "3"}, r"line 2: missing field 'index'"),
    (loaders.load_concode, {"nl": "returns x .", "code": None}, r"line 2: field 'code': expected a string, got NoneType"),
    (loaders.load_line_completion, {"input": "<s> int x", "gt": ["= 1 ;"]}, r"line 2: field 'gt': expected a string"),
])
def test_malformed_record_names_file_line_and_field(tmp_path, loader, second_line, message):
    good = {loaders.load_codesearchnet: CSN_ROW, loaders.load_poj104: POJ_ROW,
            loaders.load_concode: {"nl": "returns y .", "code": "int function ( ) { return y ; }"},
            loaders.load_line_completion: {"input": "<s> int y", "gt": "= 2 ;"}}[loader]
    bad = second_line if isinstance(second_line, str) else json.dumps(second_line)
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(good) + "\n" + bad + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}, ") + message):
        loader(path, split="test")
    assert len(loader(path, split="test", limit=1)) == 1  # the good first line alone loads


def test_not_utf8_names_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_bytes(b'{"nl": "a", "code": "b"}\n{"nl": "\xff", "code": "c"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: not UTF-8")):
        loaders.load_concode(path)


@pytest.mark.parametrize("data_lines, pairs, message", [
    (None, "13988825\t99999\t1\n", r"train\.txt, line 1: field 'idx2': unknown idx '99999'"),
    (None, "13988825\t8660836\t1\n1188160\t8660836\n", r"train\.txt, line 2: expected 'idx1<TAB>idx2<TAB>label'"),
    (None, "13988825\t8660836\t2\n", r"train\.txt, line 1: field 'label': expected 0 or 1, got '2'"),
    ('{"func": "void a() {}", "idx": "7"}\n{"func": "void b() {}", "idx": "7"}\n', "7\t7\t1\n",
     r"data\.jsonl, line 2: field 'idx': duplicate idx '7'"),
    ('{"func": "void a() {}", "idx": "7"}\n{"idx": "8"}\n', "7\t8\t1\n", r"data\.jsonl, line 2: missing field 'func'"),
])
def test_malformed_bigclonebench(tmp_path, data_lines, pairs, message):
    if data_lines is None:
        shutil.copy(DATA / "bigclonebench/data.jsonl", tmp_path / "data.jsonl")
    else:
        (tmp_path / "data.jsonl").write_text(data_lines)
    (tmp_path / "train.txt").write_text(pairs)
    with pytest.raises(ValueError, match=message):
        loaders.load_bigclonebench(tmp_path)


def test_hub_id_offline_fails_with_id_and_remedy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable, match=r"'google/code_x_glue_tc_text_to_code'.*HF_HUB_OFFLINE=1.*local copy"):
        loaders.load_concode("google/code_x_glue_tc_text_to_code")


@pytest.fixture
def fake_hub(monkeypatch):
    """`datasets.load_dataset` replaced by a table of rows in the hub schema; records each call."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    calls, tables = [], {}

    def load_dataset(dataset_id, config=None, *, split, streaming):
        calls.append((dataset_id, config, split, streaming))
        if dataset_id not in tables:
            raise FileNotFoundError(f"Couldn't find a dataset script or data file for {dataset_id}")
        return iter(tables[dataset_id])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls, tables


def test_hub_rows_map_to_records(fake_hub):
    calls, tables = fake_hub
    tables["google/code_x_glue_cc_clone_detection_big_clone_bench"] = [
        {"id": 0, "id1": 13988825, "id2": 8660836, "func1": "void a() {}", "func2": "void b() {}", "label": True}]
    tables["google/code_x_glue_cc_clone_detection_poj104"] = [{"id": 7, "code": "int main(){}", "label": "3"}]
    tables["google/code_x_glue_cc_code_completion_line"] = [{"id": 0, "input": "<s> int x", "gt": "= 1 ;"}] * 3
    pairs = loaders.load_bigclonebench("google/code_x_glue_cc_clone_detection_big_clone_bench", split="valid")
    assert list(pairs) == [ClonePair("void a() {}", "void b() {}", 1, "13988825", "8660836")]
    assert pairs.source == "hf://google/code_x_glue_cc_clone_detection_big_clone_bench" and len(pairs.fingerprint) == 64
    assert list(loaders.load_poj104("google/code_x_glue_cc_clone_detection_poj104")) == [LabelledProgram("int main(){}", 3, 7)]
    lines = loaders.load_line_completion("google/code_x_glue_cc_code_completion_line", limit=2)
    assert len(lines) == 2
    assert calls == [("google/code_x_glue_cc_clone_detection_big_clone_bench", None, "validation", False),
                     ("google/code_x_glue_cc_clone_detection_poj104", None, "train", False),
                     ("google/code_x_glue_cc_code_completion_line", "java", "train", True)]


def test_hub_malformed_row_and_missing_dataset(fake_hub):
    _, tables = fake_hub
    tables["acme/concode"] = [{"nl": "a", "code": "b"}, {"nl": "c"}]
    with pytest.raises(ValueError, match=r"acme/concode \[default/train\], row 2: missing field 'code'"):
        loaders.load_concode("acme/concode")
    with pytest.raises(DatasetUnavailable, match=r"cannot load hub dataset 'acme/absent'.*FileNotFoundError.*local copy"):
        loaders.load_concode("acme/absent")
