"""The calculator: exact arithmetic on word-problem notation, and clear refusals."""

from fractions import Fraction

import pytest

from tunelab.agents.calculator import CalculatorError, calculate, evaluate, format_number


@pytest.mark.parametrize("expression, expected", [
    ("48/2", "24"), ("0.1 + 0.2", "0.3"), ("10 / 4", "2.5"), ("1/3", "0.3333333333"), ("-2/3", "-0.6666666667"),
    ("1,000 * 3", "3000"), ("$5 * 4", "20"), ("2^10", "1024"), ("50% * 80", "40"), ("sqrt(16)", "4"),
    ("sqrt(2)", "1.4142135624"), ("round(2.567, 2)", "2.57"), ("7 // 2", "3"), ("7 % 3", "1"), ("2**-3", "0.125"),
    ("(3 + 4) * 2.5", "17.5"), ("max(3, 9, 4) - min(2, 8)", "7"), ("abs(-7.25)", "7.25"), ("2/7*7", "2"),
    ("3 × 4 ÷ 6", "2"), ("12 =", "12"), ("-0.05", "-0.05"), ("1/8", "0.125"),
])
def test_values(expression, expected):
    assert calculate(expression) == expected


def test_exact_rationals():
    assert evaluate("1/3 + 1/6") == Fraction(1, 2)
    assert evaluate("0.1 * 3") == Fraction(3, 10)  # no float error
    assert format_number(Fraction(1, 3) * 3) == "1"


@pytest.mark.parametrize("expression, message", [
    ("x + 1", "the name 'x'"), ("__import__('os').system('id')", "a call of __import__()"),
    ("open('/etc/passwd')", "a call of open()"), ("(1).real", "Attribute"), ("1/0", "division by zero"),
    ("5 % 0", "division by zero"), ("0 ** -1", "division by zero"), ("9**9**9", "exponent larger"),
    ("(10**1000)**1000", "more than 4000 digits"), ("1e400", "too large"), ("", "empty"), ("1 +", "not an arithmetic"),
    ("(-8) ** (1/3)", "negative number"), ("sqrt(-1)", "negative"), ("1 < 2", "Compare"), ("'a' * 3", "constant 'a'"),
    ("[1, 2]", "List"), ("lambda: 1", "Lambda"), ("1" * 600, "longer than 500"), ("sqrt(1, 2)", "wrong number"),
    ("round(1, 10**9)", "at most 100"), ("sqrt(2*10**400)", "too large"), ("(10**400)**0.5", "too large"),
    ("(" * 240 + "1" + ")" * 240, "not an arithmetic|nested"),
])
def test_refusals_say_why(expression, message):
    with pytest.raises(CalculatorError, match=message):
        calculate(expression)
