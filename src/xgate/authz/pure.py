"""Whether a plain policy function provably only reads its arguments, so it may run inline instead of in the pool.

A plain function runs in the policy pool so that one that blocks (I/O, a lock, a sleep) or hangs costs a thread,
not the service. The hop to the pool and back is most of what a quick policy costs (measured over the HTTP
transport: ~75 µs of xgate authz CPU per check in the pool against ~28 µs inline). A function that can do no
I/O and cannot loop forever gains nothing from the pool, so the registry runs it inline (see runner.py: a call
that still takes longer than the loop's budget sends it to the pool for good).

The proof reads the function's bytecode (the code that runs, not a source file that may have changed since) and
what its global names are bound to when it is loaded. Proven when every instruction is one of these:
- names: its own arguments and locals (comprehensions and nested functions of its own included);
- globals bound to a builtin of `_BUILTINS` (none does I/O or loops on its own), to Allow, Deny or Request, to
  plain data (None, bool, int, float, str, bytes, and tuples, lists, sets, dicts of those), or to another plain
  function of this kind (proven the same way; a cycle of calls is refused);
- attribute reads and method calls on those values, none named `__*` (the way out to anything else);
- loops over something (a `for`); a backward jump anywhere else is a `while` and is refused;
- no import, no `with` (a lock), no `global` write, no closure over an enclosing function's variables, defaults
  that are plain data.
Anything else (a module such as `time` or `requests`, a logger, `print`, a class instance, `range`, `iter`)
keeps the function in the pool; `impurity` says why, and the registry logs it. Checked when loaded: a module
that later rebinds one of its globals to something else is not followed. Not caught either: a `for` over a list
that the loop itself keeps extending (it never ends, and the runner's budget cannot stop a call that never
returns); such a policy would hang a pool thread for good too.
"""

from __future__ import annotations

import builtins
import dis
import inspect
from collections.abc import Callable, Collection
from types import CodeType, FunctionType
from typing import Any

# Builtins a proven policy may use: none does I/O, runs user code of unknown kind, or loops without end
# (`range` and `iter` are out: a header's number, or a callable, could make them loop for good).
_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "bytes", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "hash",
    "int", "isinstance", "len", "list", "map", "max", "min", "reversed", "round", "set", "sorted", "str", "sum",
    "tuple", "zip", "None", "True", "False", "ArithmeticError", "AttributeError", "Exception", "IndexError",
    "KeyError", "LookupError", "TypeError", "ValueError",
})  # fmt: skip
_REFUSED = {
    "IMPORT_NAME": "imports a module",
    "IMPORT_FROM": "imports a module",
    "IMPORT_STAR": "imports a module",
    "BEFORE_WITH": "uses `with` (a lock or a resource may block)",
    "BEFORE_ASYNC_WITH": "uses `async with`",
    "STORE_GLOBAL": "writes a global",
    "DELETE_GLOBAL": "writes a global",
    "LOAD_NAME": "reads a name outside a function",
    "STORE_NAME": "writes a name outside a function",
    "LOAD_BUILD_CLASS": "defines a class",
    "LOAD_SUPER_ATTR": "calls super()",
    "GET_AWAITABLE": "awaits",
}
_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_CONTAINERS = (tuple, list, set, frozenset)
_MAX_ITEMS = 10_000  # plain data bigger than this is not looked through: refused


def impurity(function: Callable[..., Any], known: Collection[object] = ()) -> str | None:
    """None when `function` provably only reads its arguments (see the module's docstring), else why not.
    `known`: objects it may use besides (policy.py passes Allow, Deny and Request)."""
    return _Checker(known).function(function, ())


class _Checker:
    def __init__(self, known: Collection[object]) -> None:
        self._known = {id(value) for value in known}
        self._proven: set[FunctionType] = set()

    def function(self, function: Callable[..., Any], calling: tuple[FunctionType, ...]) -> str | None:
        if not isinstance(function, FunctionType):
            return f"{_name(function)} is not a plain function"
        if function in self._proven:
            return None
        if function in calling:
            return f"{function.__qualname__} calls itself (recursion)"
        code = function.__code__
        if code.co_flags & (inspect.CO_COROUTINE | inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR):
            return f"{function.__qualname__} is a generator or coroutine"
        if function.__closure__:
            return f"{function.__qualname__} reads variables of an enclosing function"
        if any(not name.startswith("__") for name in vars(function)):
            return f"{function.__qualname__} has attributes of its own"
        defaults = [*(function.__defaults__ or ()), *(function.__kwdefaults__ or {}).values()]
        if any(not _plain_data(value, _MAX_ITEMS) for value in defaults):
            return f"{function.__qualname__} has a default argument that is not plain data"
        why = self._code(function, code, (*calling, function))
        if why is None:
            self._proven.add(function)
        return why

    def _code(self, function: FunctionType, code: CodeType, calling: tuple[FunctionType, ...]) -> str | None:
        instructions = list(dis.get_instructions(code))
        at = {instruction.offset: instruction for instruction in instructions}
        for instruction in instructions:
            where = f"{function.__qualname__} (line {_line(instruction, code)})"
            name = instruction.opname
            if name in _REFUSED:
                return f"{where} {_REFUSED[name]}"
            argument = str(instruction.argval)
            if name in ("LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR", "DELETE_ATTR") and argument.startswith("__"):
                return f"{where} uses the attribute {argument}"
            if name == "LOAD_GLOBAL" and (why := self._global(function, argument, calling)) is not None:
                return f"{where} {why}"
            if "JUMP" in name and isinstance(instruction.argval, int) and instruction.argval <= instruction.offset:
                target = at.get(instruction.argval)
                if target is None or target.opname != "FOR_ITER":
                    return f"{where} has a loop that is not a `for` (a `while` may not end)"
        for constant in code.co_consts:
            if isinstance(constant, CodeType) and (why := self._code(function, constant, calling)) is not None:
                return why
        return None

    def _global(self, function: FunctionType, name: str, calling: tuple[FunctionType, ...]) -> str | None:
        space = function.__globals__
        if name in space:
            value = space[name]
        else:
            found = getattr(function, "__builtins__", vars(builtins)).get(name, _MISSING)  # not in typeshed
            if found is _MISSING:
                return f"uses {name}, which is not defined when loaded"
            if name in _BUILTINS and found is getattr(builtins, name, _MISSING):
                return None
            return f"uses the builtin {name}"
        if id(value) in self._known:
            return None
        if isinstance(value, FunctionType):
            why = self.function(value, calling)
            return None if why is None else f"calls {name}: {why}"
        if _plain_data(value, _MAX_ITEMS):
            return None
        return f"uses {name} ({type(value).__name__})"


_MISSING = object()


def _plain_data(value: object, budget: int) -> bool:
    """None, numbers, strings and containers of them (at most `budget` items in all): no method of any runs code
    of its own or does I/O."""
    if type(value) in _PLAIN:
        return True
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) in _PLAIN:
            continue
        if type(item) in _CONTAINERS:
            items = list(item)  # type: ignore[call-overload]
        elif type(item) is dict:
            items = [*item.keys(), *item.values()]
        else:
            return False
        budget -= len(items)
        if budget < 0:
            return False
        pending.extend(items)
    return True


def _line(instruction: dis.Instruction, code: CodeType) -> int:
    line = instruction.positions.lineno if instruction.positions else None
    return line if line is not None else code.co_firstlineno


def _name(value: object) -> str:
    return getattr(value, "__qualname__", None) or type(value).__name__
