"""Unit tests for reading local data files into canonical splits, label encoding, limits and tokenisation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from distill.config import DataConfig
from distill.data import SUFFIX_FORMATS, TaskData, load_task_data, read_table, tokenize
from distill.errors import DataError, DistillError
from tests.conftest import WORDS

RTE_ROWS = [
    ("0", 'He said "hello to the crowd.', "He greeted people.", "entailment"),
    ("1", "The cat sat.", 'A dog "barked.', "not_entailment"),
    ("2", "It rained all day.", "The ground is wet.", "entailment"),
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_rte_like(path: Path) -> Path:
    """A GLUE RTE-format TSV: index, sentence1, sentence2, string label; unbalanced double quotes in the text."""
    return write_lines(path, ["index\tsentence1\tsentence2\tlabel", *("\t".join(row) for row in RTE_ROWS)])


def data_config(train: Path, validation: Path | None = None, **fields) -> DataConfig:
    return DataConfig(train=train, validation=validation or train, **fields)


# --- SST-2 / RTE in GLUE format ------------------------------------------------------------------------------------


def test_sst2_tsv_with_trailing_space_before_tab(tmp_path):
    path = write_lines(
        tmp_path / "train.tsv", ["sentence\tlabel", "a charming journey . \t1", "bleak and dull \t0", "it 's fine \t1"]
    )
    data = load_task_data(data_config(path), "sst2")
    assert isinstance(data, TaskData)
    assert data.train.column_names == ["text", "label"]
    assert [text.strip() for text in data.train["text"]] == ["a charming journey .", "bleak and dull", "it 's fine"]
    assert list(data.train["label"]) == [1, 0, 1]
    assert data.label_names == ["negative", "positive"]
    assert data.metrics == ["accuracy"] and data.main_metric == "accuracy"
    assert not data.is_regression and data.num_labels == 2 and not data.has_pair


def test_sst2_like_fixture_files_load(sst2_like):
    train, dev = sst2_like
    data = load_task_data(data_config(train, dev), "sst2")
    assert (len(data.train), len(data.validation)) == (96, 32)
    assert set(data.train["label"]) == {0, 1}


def test_rte_pairs_with_string_labels_and_unbalanced_quotes(tmp_path):
    path = write_rte_like(tmp_path / "dev.tsv")
    data = load_task_data(data_config(path), "rte")
    assert data.train.column_names == ["text", "text_pair", "label"]
    assert data.has_pair
    assert len(data.train) == 3, "quoting must be disabled, or a stray quote swallows the following rows"
    assert list(data.train["text"]) == [row[1] for row in RTE_ROWS]
    assert list(data.train["text_pair"]) == [row[2] for row in RTE_ROWS]
    assert data.train["text"][0] == 'He said "hello to the crowd.'
    assert list(data.train["label"]) == [0, 1, 0]
    assert data.label_names == ["entailment", "not_entailment"]


def test_read_table_keeps_quote_characters_in_tsv(tmp_path):
    path = write_lines(tmp_path / "q.tsv", ["sentence\tlabel", '"quoted start\t1', 'end quote"\t0', 'a "b" c\t1'])
    frame = read_table(path)
    assert frame["sentence"].tolist() == ['"quoted start', 'end quote"', 'a "b" c']
    assert frame["label"].tolist() == ["1", "0", "1"]


# --- other formats -------------------------------------------------------------------------------------------------


def test_csv_with_quoted_commas(tmp_path):
    path = write_lines(tmp_path / "train.csv", ["sentence,label", '"good, really good",1', "bad,0"])
    data = load_task_data(data_config(path), "sst2")
    assert list(data.train["text"]) == ["good, really good", "bad"]
    assert list(data.train["label"]) == [1, 0]


def test_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"sentence": "great film", "label": 1}, {"sentence": "awful plot", "label": 0}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    data = load_task_data(data_config(path), "sst2")
    assert list(data.train["text"]) == ["great film", "awful plot"]
    assert list(data.train["label"]) == [1, 0]


def test_parquet_with_string_labels(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"sentence": ["nice", "poor", "fun"], "label": ["positive", "negative", "positive"]}).to_parquet(path)
    data = load_task_data(data_config(path), "sst2")
    assert list(data.train["text"]) == ["nice", "poor", "fun"]
    assert list(data.train["label"]) == [1, 0, 1]


def test_declared_format_overrides_suffix(tmp_path):
    path = write_lines(tmp_path / "train.txt", ["sentence\tlabel", "fine\t1", "dull\t0"])
    data = load_task_data(data_config(path, format="tsv"), "sst2")
    assert list(data.train["label"]) == [1, 0]


def test_unknown_suffix_asks_for_data_format(tmp_path):
    path = write_lines(tmp_path / "train.txt", ["sentence\tlabel", "fine\t1"])
    with pytest.raises(DataError, match="set data.format"):
        read_table(path)


def test_suffix_formats_cover_every_declared_format():
    assert set(SUFFIX_FORMATS.values()) == {"tsv", "csv", "jsonl", "parquet"}


# --- labels --------------------------------------------------------------------------------------------------------


def test_custom_task_with_integer_labels(tmp_path):
    path = write_lines(tmp_path / "t.csv", ["review,stars", "a,2", "b,0", "c,1", "d,2"])
    data = load_task_data(data_config(path, text_column="review", label_column="stars"), None)
    assert data.label_names == ["0", "1", "2"]
    assert list(data.train["label"]) == [2, 0, 1, 2]
    assert data.metrics == ["accuracy"] and data.num_labels == 3


def test_custom_task_with_string_labels_sorted(tmp_path):
    path = write_lines(tmp_path / "t.csv", ["review,mood", "a,sad", "b,happy", "c,angry"])
    data = load_task_data(data_config(path, text_column="review", label_column="mood"), None)
    assert data.label_names == ["angry", "happy", "sad"]
    assert list(data.train["label"]) == [2, 1, 0]


def test_custom_task_with_integral_float_labels_is_classification(tmp_path):
    # Parquet/JSONL/CSV writers often store class ids as floats (0.0, 1.0); they are still classes 0 and 1.
    path = write_lines(tmp_path / "t.csv", ["review,y", "a,0.0", "b,1.0", "c,1.0"])
    data = load_task_data(data_config(path, text_column="review", label_column="y"), None)
    assert data.label_names == ["0", "1"]
    assert list(data.train["label"]) == [0, 1, 1]


def test_explicit_label_names(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["sentence\tlabel", "x\tyes", "y\tno", "z\t1"])
    data = load_task_data(data_config(path, label_names=["no", "yes"]), "sst2")
    assert data.label_names == ["no", "yes"]
    assert list(data.train["label"]) == [1, 0, 1]


def test_float_labels_with_auto_problem_type_are_regression(tmp_path):
    path = write_lines(tmp_path / "t.csv", ["text,score", "a,0.5", "b,3.25", "c,4"])
    data = load_task_data(data_config(path, text_column="text", label_column="score"), None)
    assert data.is_regression and data.label_names is None and data.num_labels == 1
    assert list(data.train["label"]) == [0.5, 3.25, 4.0]
    assert data.metrics == ["pearson", "spearman"]


def test_problem_type_regression_forces_floats_for_integer_labels(tmp_path):
    path = write_lines(tmp_path / "t.csv", ["text,score", "a,1", "b,5", "c,3"])
    data = load_task_data(data_config(path, text_column="text", label_column="score", problem_type="regression"), None)
    assert data.is_regression
    assert list(data.train["label"]) == [1.0, 5.0, 3.0]
    assert all(isinstance(value, float) for value in data.train["label"])


def test_stsb_preset_is_regression(tmp_path):
    path = write_lines(tmp_path / "dev.tsv", ["index\tsentence1\tsentence2\tscore", "0\ta\tb\t4.2", "1\tc\td\t0.0"])
    data = load_task_data(data_config(path), "stsb")
    assert data.is_regression and data.has_pair
    assert list(data.train["label"]) == pytest.approx([4.2, 0.0])
    assert data.metrics == ["pearson", "spearman"] and data.main_metric == "pearson"


def test_non_numeric_label_in_regression_is_data_error(tmp_path):
    path = write_lines(tmp_path / "dev.tsv", ["index\tsentence1\tsentence2\tscore", "0\ta\tb\thigh"])
    with pytest.raises(DataError, match=r"non-numeric label 'high'"):
        load_task_data(data_config(path), "stsb")


def test_unknown_label_value_is_data_error_naming_row_and_value(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["sentence\tlabel", "x\t1", "y\tmaybe"])
    with pytest.raises(DataError) as info:
        load_task_data(data_config(path), "sst2")
    message = str(info.value)
    assert "row 2" in message and "'maybe'" in message and "data.label_names" in message


def test_out_of_range_integer_label_is_data_error(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["sentence\tlabel", "x\t1", "y\t2"])
    with pytest.raises(DataError, match="'2'"):
        load_task_data(data_config(path), "sst2")


def test_custom_integer_labels_must_start_at_zero(tmp_path):
    path = write_lines(tmp_path / "t.csv", ["text,stars", "a,1", "b,2", "c,3"])
    with pytest.raises(DataError, match=r"0..K-1 .*\[1, 2, 3\]"):
        load_task_data(data_config(path, text_column="text", label_column="stars"), None)


def test_validation_label_unseen_in_train_is_data_error(tmp_path):
    train = write_lines(tmp_path / "train.csv", ["text,mood", "a,sad", "b,happy"])
    dev = write_lines(tmp_path / "dev.csv", ["text,mood", "a,angry"])
    with pytest.raises(DataError) as info:
        load_task_data(data_config(train, dev, text_column="text", label_column="mood"), None)
    assert str(dev) in str(info.value) and "'angry'" in str(info.value)


# --- file and column errors ----------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "train.tsv"
    with pytest.raises(DataError) as info:
        load_task_data(data_config(missing), "sst2")
    assert str(missing) in str(info.value)
    assert issubclass(DataError, DistillError)


def test_missing_column_names_it_and_lists_the_columns_found(tmp_path):
    path = write_rte_like(tmp_path / "rte.tsv")
    with pytest.raises(DataError) as info:
        load_task_data(data_config(path), "sst2")
    message = str(info.value)
    assert "data.text_column 'sentence'" in message
    assert "index, sentence1, sentence2, label" in message
    assert str(path) in message


def test_missing_label_column_override(sst2_like):
    train, dev = sst2_like
    with pytest.raises(DataError) as info:
        load_task_data(data_config(train, dev, label_column="nope"), "sst2")
    assert "data.label_column 'nope'" in str(info.value)
    assert "sentence, label" in str(info.value)


def test_missing_pair_column(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["sentence1\tlabel", "a\tentailment"])
    with pytest.raises(DataError, match="data.text_pair_column 'sentence2'"):
        load_task_data(data_config(path), "rte")


def test_header_only_file_has_no_rows(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["sentence\tlabel"])
    with pytest.raises(DataError, match="has no rows"):
        read_table(path)


def test_zero_byte_file_is_data_error(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_malformed_jsonl_is_data_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"sentence": "a", "label": 1}\n{broken\n', encoding="utf-8")
    with pytest.raises(DataError, match="as jsonl"):
        read_table(path)


# --- limits and the baseline ---------------------------------------------------------------------------------------


def test_train_limit_is_deterministic_per_seed(sst2_like):
    train, dev = sst2_like
    cfg = data_config(train, dev, train_limit=10, validation_limit=8)
    first = load_task_data(cfg, "sst2", seed=0)
    again = load_task_data(cfg, "sst2", seed=0)
    other = load_task_data(cfg, "sst2", seed=1)
    assert len(first.train) == 10 and len(first.validation) == 8
    assert list(first.train["text"]) == list(again.train["text"])
    assert list(first.validation["text"]) == list(again.validation["text"])
    assert list(first.train["text"]) != list(other.train["text"])
    everything = load_task_data(data_config(train, dev), "sst2")
    assert set(first.train["text"]) <= set(everything.train["text"])


def test_limit_above_size_keeps_everything_in_order(sst2_like):
    train, dev = sst2_like
    full = load_task_data(data_config(train, dev), "sst2")
    limited = load_task_data(data_config(train, dev, train_limit=1000), "sst2")
    assert list(limited.train["text"]) == list(full.train["text"])


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert_dir)


def test_fixture_tokenizer_knows_the_fixture_words(tokenizer):
    # Everything downstream (tokenised lengths, "labels learnable from the words") assumes whole-word ids.
    assert len(tokenizer) == 5 + len(WORDS)
    assert tokenizer("good movie")["input_ids"] == [
        tokenizer.cls_token_id,
        5 + WORDS.index("good"),
        5 + WORDS.index("movie"),
        tokenizer.sep_token_id,
    ]


def test_tokenize_single_sentences_without_padding(tokenizer, tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["sentence\tlabel", "good\t1", "the movie was really very boring\t0"])
    data = load_task_data(data_config(path), "sst2")
    encoded = tokenize(data.train, tokenizer, max_length=16)
    assert set(encoded.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    lengths = [len(ids) for ids in encoded["input_ids"]]
    assert lengths == [3, 8], "[CLS] + words + [SEP], no padding"
    assert all(all(bit == 1 for bit in mask) for mask in encoded["attention_mask"])
    assert list(encoded["labels"]) == [1, 0]
    assert encoded["input_ids"][0] == [
        tokenizer.cls_token_id,
        tokenizer.convert_tokens_to_ids("good"),
        tokenizer.sep_token_id,
    ]


def test_tokenize_pairs_and_truncation(tokenizer, tmp_path):
    path = write_lines(
        tmp_path / "t.tsv",
        [
            "index\tsentence1\tsentence2\tlabel",
            "0\tthe film\tit was good\tentailment",
            "1\t" + " ".join(["very"] * 40) + "\tsad\tnot_entailment",
        ],
    )
    data = load_task_data(data_config(path), "rte")
    encoded = tokenize(data.train, tokenizer, max_length=12)
    assert encoded["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(encoded["input_ids"][0]) == 8
    assert len(encoded["input_ids"][1]) == 12
    assert list(encoded["labels"]) == [0, 1]


# --- any tabular input: header or not, columns by position, quoting, BOM -------------------------------------------


def test_headerless_tsv_with_columns_by_position(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["7\tgood fun\tpositive", "8\tdull\tnegative", '9\tsaid "hi\tpositive'])
    data = load_task_data(data_config(path, header=False, text_column=1, label_column=2), None)
    assert list(data.train["text"]) == ["good fun", "dull", 'said "hi']
    assert data.label_names == ["negative", "positive"] and list(data.train["label"]) == [1, 0, 1]


def test_headerless_pairs_by_position_with_a_preset(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["0\ta b\tc d\tentailment", "1\te f\tg h\tnot_entailment"])
    data = load_task_data(data_config(path, header=False, text_column=1, text_pair_column=2, label_column=3), "rte")
    assert list(data.train["text_pair"]) == ["c d", "g h"] and list(data.train["label"]) == [0, 1]


def test_positions_with_a_header_line(tmp_path):
    path = write_lines(tmp_path / "t.csv", ["id,review,mood", "1,fine,happy", "2,poor,sad"])
    data = load_task_data(data_config(path, text_column=1, label_column=2), None)
    assert list(data.train["text"]) == ["fine", "poor"] and data.label_names == ["happy", "sad"]


def test_headerless_file_with_column_names_is_error_naming_the_fix(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["it 's fine \t1", "bleak and dull \t0", "a charming film \t1"])
    with pytest.raises(DataError) as info:
        load_task_data(data_config(path), "sst2")
    message = str(info.value)
    assert "data.text_column 'sentence'" in message and "looks like data ('1' reads as a label)" in message
    assert "--set data.header=false --set data.text_column=0 --set data.label_column=1" in message
    assert "\n" not in message


def test_headerless_rte_read_with_names_guesses_the_positions(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["\t".join(row) for row in RTE_ROWS])
    with pytest.raises(
        DataError, match="header=false --set data.text_column=1 --set data.text_pair_column=2 --set data.label_column=3"
    ):
        load_task_data(data_config(path), "rte")


def test_headerless_file_with_positions_but_header_unset_is_caught(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["fine\t1", "dull\t0", "fun\t1"])
    with pytest.raises(DataError, match=r"'1' in label column 1.*set data.header: false"):
        load_task_data(data_config(path, text_column=0, label_column=1), None)
    # Written out, header: true keeps the line as the header (a file whose header really is a label value).
    data = load_task_data(data_config(path, header=True, text_column=0, label_column=1), None)
    assert list(data.train["text"]) == ["dull", "fun"]


def test_header_false_with_column_names_is_error(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["fine\t1"])
    with pytest.raises(DataError) as info:
        load_task_data(data_config(path, header=False, label_column=1), "sst2")
    message = str(info.value)
    assert (
        "data.text_column is the sst2 preset's name 'sentence'" in message
        and "data.label_column" not in message.split(";")[0]
    )
    assert "--set data.text_column=0" in message


def test_position_past_the_last_column_is_error(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["fine\t1"])
    with pytest.raises(DataError, match=r"2 column\(s\), at positions 0 to 1, but data.label_column is 5"):
        load_task_data(data_config(path, header=False, text_column=0, label_column=5), None)


def test_header_false_is_refused_for_jsonl(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"sentence": "a", "label": 1}\n', encoding="utf-8")
    with pytest.raises(DataError, match="data.header: false is for TSV and CSV files"):
        read_table(path, header=False)


def test_csv_with_quotes_and_commas_inside_fields(tmp_path):
    path = write_lines(
        tmp_path / "t.csv", ["text,label", '"He said ""no, never"", then left",neg', '"a, b, c",pos', "plain,pos"]
    )
    data = load_task_data(data_config(path, text_column="text", label_column="label"), None)
    assert list(data.train["text"]) == ['He said "no, never", then left', "a, b, c", "plain"]
    assert list(data.train["label"]) == [0, 1, 1]


def test_tsv_with_csv_quoting(tmp_path):
    path = write_lines(tmp_path / "t.tsv", ["sentence\tlabel", '"tab\there"\t1', '"line ""q"""\t0'])
    frame = read_table(path, quoting="csv")
    assert frame["sentence"].tolist() == ["tab\there", 'line "q"']


def test_csv_with_quoting_none_keeps_quote_characters(tmp_path):
    path = write_lines(tmp_path / "t.csv", ["text,label", '"quoted,1'])
    assert read_table(path, quoting="none")["text"].tolist() == ['"quoted']


@pytest.mark.parametrize("name", ["t.tsv", "t.csv", "t.jsonl"])
def test_utf8_byte_order_mark_stays_out_of_the_first_column_name(tmp_path, name):
    path = tmp_path / name
    body = {
        "t.tsv": "sentence\tlabel\ncafé\t1\n",
        "t.csv": "sentence,label\ncafé,1\n",
        "t.jsonl": '{"sentence": "café", "label": 1}\n',
    }[name]
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert list(read_table(path).columns) == ["sentence", "label"]
    assert list(load_task_data(data_config(path), "sst2").train["text"]) == ["café"]


def test_many_string_classes(tmp_path):
    moods = [f"class{i:02d}" for i in range(12)]
    path = write_lines(tmp_path / "t.tsv", ["text\tmood", *(f"row {i}\t{mood}" for i, mood in enumerate(moods))])
    data = load_task_data(data_config(path, text_column="text", label_column="mood"), None)
    assert data.num_labels == 12 and list(data.train["label"]) == list(range(12))


def test_set_override_gives_integer_columns(tmp_path):
    from distill.config import load_config

    train = write_lines(tmp_path / "t.tsv", ["0\tfine\t1"])
    job = tmp_path / "job.yaml"
    job.write_text(
        f"task: null\ndata:\n  train: {train}\n  validation: {train}\nstudents: [{{name: s}}]\n", encoding="utf-8"
    )
    config = load_config(
        job, ["data.header=false", "data.text_column=1", "data.label_column=2", "data.text_pair_column=0"]
    )
    assert (config.data.text_column, config.data.label_column, config.data.header) == (1, 2, False)
    assert config.data.text_pair_column == 0
    quoted = load_config(job, ["data.text_column='1'", "data.label_column=label"])
    assert quoted.data.text_column == "1"
