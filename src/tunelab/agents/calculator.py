"""The calculator tool: arithmetic by walking the expression's syntax tree (never
``eval``), in exact rationals, so ``0.1 + 0.2`` is ``0.3`` and ``10 / 4`` is ``2.5``.

Accepted: numbers (``1,000`` and ``$5`` as written in word problems), ``+ - * / // % **``
(``^`` and ``×``/``÷`` too), parentheses, and ``abs round min max sqrt``. Anything else
(names, attributes, calls of other functions, comparisons) is refused with a message
that says what was found. Sizes are bounded so that ``9**9**9`` is an error, not a hang.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from fractions import Fraction

from tunelab.errors import TunelabError

MAX_LENGTH = 500  # characters of an expression
MAX_EXPONENT = 1000
MAX_DIGITS = 4000  # of any intermediate numerator or denominator
MAX_BITS = int(MAX_DIGITS * math.log2(10))
DECIMALS = 10  # a non-terminating result is shown rounded to this many places


class CalculatorError(TunelabError):
    """An expression the calculator refuses or cannot compute; the message says why."""


BINARY: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b), ast.Mod: operator.mod,
}
UNARY: dict[type, Callable[[Fraction], Fraction]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _sqrt(x: Fraction) -> Fraction:
    if x < 0:
        raise CalculatorError("sqrt of a negative number")
    root_n, root_d = math.isqrt(x.numerator), math.isqrt(x.denominator)
    if root_n * root_n == x.numerator and root_d * root_d == x.denominator:
        return Fraction(root_n, root_d)  # exact where it is
    return Fraction(math.sqrt(x))


FUNCTIONS: dict[str, Callable[..., Fraction]] = {
    "abs": abs, "min": min, "max": max, "sqrt": _sqrt,
    "round": lambda x, digits=Fraction(0): _round(x, digits),
}


def _round(x: Fraction, digits: Fraction) -> Fraction:
    if digits.denominator != 1 or abs(digits) > 100:  # round(1, 10**9) would compute 10**(10**9)
        raise CalculatorError("round() takes a whole number of digits, at most 100")
    return Fraction(round(x, int(digits)))


def normalize(expression: str) -> str:
    """Word-problem notation as Python arithmetic: thousands separators and currency
    signs go, ``^`` is a power, ``×``/``÷`` are ``*``/``/``, a percent sign that no operand
    follows is /100 (``50%``; ``7 % 3`` stays a remainder)."""
    text = expression.strip().rstrip("=").strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = text.replace("$", "").replace("^", "**").replace("×", "*").replace("÷", "/")
    return re.sub(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d.(])", r"(\1/100)", text)  # 50% * 80, not 7 % 3


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression, or a CalculatorError."""
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"expression longer than {MAX_LENGTH} characters")
    text = normalize(expression)
    if not text:
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        raise CalculatorError(f"not an arithmetic expression: {expression!r} ({error.msg})") from None
    except (ValueError, RecursionError, MemoryError):  # a NUL byte; nesting too deep for the parser
        raise CalculatorError("not an arithmetic expression") from None
    try:
        return _value(tree.body)
    except OverflowError:  # a float step (sqrt, a fractional power) out of range
        raise CalculatorError("a number too large") from None
    except RecursionError:
        raise CalculatorError("an expression nested too deeply") from None


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise CalculatorError(f"a number too large: {ast.unparse(node)}")
        return Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _power(_value(node.left), _value(node.right))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _value(node.left), _value(node.right)
        if right == 0 and type(node.op) in (ast.Div, ast.FloorDiv, ast.Mod):
            raise CalculatorError("division by zero")
        return _bounded(BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS \
            and not node.keywords:
        try:
            return _bounded(FUNCTIONS[node.func.id](*[_value(a) for a in node.args]))
        except TypeError:
            raise CalculatorError(f"wrong number of arguments to {node.func.id}()") from None
    raise CalculatorError(f"unsupported in an arithmetic expression: {_describe(node)}; "
                          f"use numbers, + - * / // % ** ( ) and {', '.join(FUNCTIONS)}")


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero")
    if exponent.denominator == 1:
        size = max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(int(exponent))
        if size > MAX_BITS:  # refuse before computing, not after
            raise CalculatorError(f"a number with more than {MAX_DIGITS} digits")
        return _bounded(base ** int(exponent))
    if base < 0:
        raise CalculatorError("a fractional power of a negative number")
    return _bounded(Fraction(float(base) ** float(exponent)))


def _bounded(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise CalculatorError(f"a number with more than {MAX_DIGITS} digits")
    return value


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name '{node.id}'"
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r}"
    if isinstance(node, ast.Call):
        return f"a call of {ast.unparse(node.func)}()"
    return f"{type(node).__name__} '{ast.unparse(node)}'"


def format_number(value: Fraction) -> str:
    """An integer as an integer; a terminating decimal exactly (2.5); anything else rounded
    to ``DECIMALS`` places (0.3333333333)."""
    if value.denominator == 1:
        return str(value.numerator)
    places = 0
    while places < DECIMALS and (value * 10**places).denominator != 1:
        places += 1
    if (value * 10**places).denominator != 1:  # does not terminate (or not within DECIMALS)
        return _fixed(value, DECIMALS).rstrip("0").rstrip(".")
    return _fixed(value, places)


def _fixed(value: Fraction, places: int) -> str:
    """``value`` to ``places`` decimal places, from its exact digits (no float rounding)."""
    scaled = round(abs(value) * 10**places)
    digits = f"{scaled:0{places + 1}d}"
    return ("-" if value < 0 and scaled else "") + f"{digits[:-places]}.{digits[-places:]}"


def calculate(expression: str) -> str:
    """The calculator tool's observation: the formatted value of ``expression``."""
    return format_number(evaluate(expression))
