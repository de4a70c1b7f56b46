"""Progress bars: widgets in a live notebook, text on stderr in a book build (pages leave stderr out)."""
import pytest
from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as text_tqdm

from telly.progress import progress_bar


def test_a_book_build_gets_text_bars_on_stderr(monkeypatch, capsys):
    monkeypatch.setenv("TELLY_PROGRESS", "text")
    bar = progress_bar(range(3), desc="sweep")
    assert type(bar) is text_tqdm and list(bar) == [0, 1, 2]
    captured = capsys.readouterr()
    assert "sweep" in captured.err and not captured.out


def test_default_is_tqdm_auto_and_off_disables(monkeypatch):
    monkeypatch.delenv("TELLY_PROGRESS", raising=False)
    assert isinstance(progress_bar(range(2), desc="x"), auto_tqdm)
    monkeypatch.setenv("TELLY_PROGRESS", "off")
    assert progress_bar(range(2), desc="x").disable


def test_an_unknown_mode_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv("TELLY_PROGRESS", "widgets")
    with pytest.raises(ValueError, match="TELLY_PROGRESS='widgets': expected one of auto, text, off"):
        progress_bar(range(2), desc="x")
