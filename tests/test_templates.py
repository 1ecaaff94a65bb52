import pytest

from cuetune.errors import TemplateError
from cuetune.prompt.templates import Slot, Soft, Text, parse


def test_parse_slots_soft_and_escapes():
    t = parse('{soft:3} Q: {text} {{x}} {soft:"It was"} {mask}.')
    assert t.segments == (Soft(3), Text(" Q: "), Slot("text"), Text(" {x} "),
                          Soft(0, "It was"), Text(" "), Slot("answer"), Text("."))
    assert t.has("answer") and not t.has("text_pair")


def test_without_soft_tidies_whitespace():
    t = parse("{soft:5} Review: {text} {soft:2} Sentiment: {answer}").without_soft()
    assert t.segments == (Text("Review: "), Slot("text"), Text("  Sentiment: "), Slot("answer"))


@pytest.mark.parametrize("source, fragment", [
    ("{txt} {answer}", "did you mean 'text'"),
    ("{text}", "no {answer} slot"),
    ("Sentiment: {answer}", "no {text} slot"),
    ("{text} {answer} }", "unmatched '}'"),
    ("{soft} {text} {answer}", "needs a count"),
    ("{soft:0} {text} {answer}", "count must be 1..1000"),
    ("{text} {text} {answer}", "appears 2 times"),
    ('{soft:"abc} {text} {answer}', "unterminated"),
    ("{text:3} {answer}", "takes no argument"),
    ("{text {answer}", "expected '}'"),
])
def test_errors_name_the_problem(source, fragment):
    with pytest.raises(TemplateError, match=None) as info:
        parse(source).check()
    assert fragment in str(info.value)
    assert "template" in str(info.value)
