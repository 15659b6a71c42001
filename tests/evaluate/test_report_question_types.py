"""The VQA report's summary gives accuracy per question type, the official types first in the official order."""

from pathlib import Path

from butd.evaluate.report import ReportItem, _summary_html


def test_question_type_table_in_the_official_order():
    def item(qid, answer, truth, atype, qtype):
        return ReportItem(qid, Path("x.jpg"), (), answers=((answer, 0.9),), truth=(truth,) * 10, answer_type=atype,
                          question_type=qtype)

    html = _summary_html([item("q1", "red", "red", "other", "what color is the"),
                          item("q2", "2", "3", "number", "how many"),
                          item("q3", "no", "no", "yes/no", "what shape is the")])
    table = html[html.index("<th>question type</th>"):]
    rows = [table.index(t) for t in ("<td>how many</td><td>1</td><td>0.0</td>",
                                     "<td>what color is the</td><td>1</td><td>100.0</td>",
                                     "<td>what shape is the</td><td>1</td><td>100.0</td>")]
    assert rows == sorted(rows)  # "how many" (1st official) < "what color is the" (4th) < unofficial last
    assert "<th>answer type</th>" in html
