"""The CLI accepts what people type and ends bad input in one clear line; only telly/cli.py parses."""
import ast
import json
from pathlib import Path

import pytest

from telly import cli

ROOT = Path(__file__).resolve().parent.parent


def test_a_negative_freeze_list_reads_with_or_without_an_equals_sign():
    assert cli._signed_values(["sweep", "--freeze", "-1,5", "--seeds", "0,1"]) == ["sweep", "--freeze=-1,5", "--seeds", "0,1"]
    assert cli._signed_values(["sweep", "--freeze=-1,5"]) == ["sweep", "--freeze=-1,5"]
    assert cli._signed_values(["sweep", "--freeze", "--force"]) == ["sweep", "--freeze", "--force"]
    args = cli.build_parser().parse_args(cli._signed_values(["sweep", "--freeze", "-1,5"]))
    assert args.freeze == "-1,5"
    args = cli.build_parser().parse_args(cli._signed_values(["finetune", "--task", "code-search", "--freeze", "-1"]))
    assert args.freeze == -1


def test_bad_input_ends_in_one_line(tmp_path, capsys):
    assert cli.main(["probe", "--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "not a directory" in err[0]
    model = tmp_path / "model"  # a model folder with a config but no tokenizer
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
                                                   "num_attention_heads": 1, "intermediate_size": 8}))
    assert cli.main(["finetune", "--task", "code-search", "--model", str(model), "--profile", "smoke",
                     "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(model) in err[0]


def test_only_the_cli_module_defines_argument_parsers():
    defining = []
    for path in sorted((ROOT / "telly").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("ArgumentParser", "add_parser", "add_argument"):
                defining.append(path.relative_to(ROOT).as_posix())
    assert set(defining) == {"telly/cli.py"}


@pytest.mark.parametrize("command", ["fetch", "probe", "similarity", "finetune", "sweep", "bench", "book", "study"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0 and command in capsys.readouterr().out
