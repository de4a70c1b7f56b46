"""Tables as pages show them: intervals folded into one cell, dashes for missing values, no index."""
import numpy as np
import pandas as pd

from telly.report.tables import CSS_CLASS, number, readable, readable_frame


def test_intervals_fold_missing_values_dash_and_the_index_goes():
    frame = pd.DataFrame({"task": ["a", "b"], "value": [0.71234, np.nan], "low": [0.6, None], "high": [0.8, None],
                          "seeds": [3, 5], "share": [0.1, 0.2], "share_low": [0.05, 0.1], "share_high": [0.2, 0.3]})
    shown = readable_frame(frame.set_index("task"))
    assert list(shown.columns) == ["task", "value", "seeds", "share"]
    assert shown.iloc[0].tolist() == ["a", "0.712 [0.600, 0.800]", "3", "0.100 [0.050, 0.200]"]
    assert shown.iloc[1]["value"] == "–"
    html = readable(frame).to_html()
    assert f'class="{CSS_CLASS}"' in html and ">0<" not in html  # no index column


def test_numbers_read_as_a_reader_reads_them():
    assert number(np.float32("nan")) == "–" and number(None) == "–" and number(True) == "yes"
    assert number(12345) == "12,345" and number(2500.0) == "2,500" and number(0.12345) == "0.123"
    assert number(123.456) == "123.5" and number([1, 2.5]) == "1, 2.500"


def test_long_text_wraps_inside_its_column_and_numbers_do_not():
    frame = pd.DataFrame({"bleu": [4.021, 0.689], "prediction": ["raise NotImplementedError" * 3, "self.write(b)"]})
    html = readable(frame).to_html()
    styled = {line.split("{")[0].strip() for line in html.split("}") if "overflow-wrap: anywhere" in line}
    assert styled and all("col1" in selector for selector in styled)  # the prediction column only
    assert "overflow-wrap" not in readable(frame[["bleu"]]).to_html()
