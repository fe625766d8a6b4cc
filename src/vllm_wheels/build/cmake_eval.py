"""A small evaluator of the CMake constructs vLLM's build files use to fetch external
sources, so the plan knows exactly what the CUDA configure will download.

Why not run CMake itself: the plan runs before any toolchain exists. vLLM's configure
calls `find_package(Torch)` and enables the CUDA language, so it needs the build venv's
torch and nvcc; the plan must name every external (to prefetch it, pin it in a lock or a
bundle) before either is there. CMake's own trace of the real configure is recorded later
(fetchcontent.read_trace) and cross-checks this evaluation.

What it evaluates: the command tokenizer (comments, quoted/bracket/unquoted arguments,
nested parentheses), variables (set, list(APPEND), option, cache entries), include() of
files inside the source tree, if/elseif/else with three-valued conditions, function/macro
calls, foreach/while, return(), message(FATAL_ERROR). What is not known at plan time (the
compiler, torch's find_package results, files on disk, environment variables) is
*unknown*: an unknown condition takes every branch that could be taken and the variables
the branches set differently become unknown afterwards, so the fetches found are a
superset of those of any real configure of the given device, never a subset. A known
condition (VLLM_TARGET_DEVICE, a given CUDA version) takes exactly its branch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path


class _Unknown:
    """A value not known at plan time."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()
# A variable explicitly unset (`set(X)`, `unset(X)`): expands to "", is not DEFINED.
UNSET = "\x00unset"
Value = str | _Unknown  # a variable's value ("" is known-empty)
Tri = bool | None  # three-valued truth: None = unknown


# ------------------------------------------------------------------------------ tokenizer

@dataclass(frozen=True)
class Arg:
    text: str  # raw text between delimiters (escapes and ${} not yet processed)
    kind: str  # "unquoted" | "quoted" | "bracket"


@dataclass(frozen=True)
class Command:
    name: str  # lowercased: CMake command names are case-insensitive
    args: tuple[Arg, ...]
    file: Path
    line: int


class CMakeSyntaxError(ValueError):
    pass


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACKET_OPEN = re.compile(r"\[(=*)\[")


def tokenize(text: str, file: Path = Path("<string>")) -> list[Command]:
    """Every command invocation of a CMake file, in order."""
    commands: list[Command] = []
    i, n, line = 0, len(text), 1

    def skip_bracket(start: int) -> int:
        """`start` at `[` of `[=*[`: the index after the matching `]=*]`."""
        nonlocal line
        m = _BRACKET_OPEN.match(text, start)
        assert m is not None
        close = "]" + m.group(1) + "]"
        end = text.find(close, m.end())
        if end < 0:
            raise CMakeSyntaxError(f"{file}:{line}: unterminated bracket")
        line += text.count("\n", start, end)
        return end + len(close)

    def skip_comment(start: int) -> int:
        if _BRACKET_OPEN.match(text, start + 1):
            return skip_bracket(start + 1)
        end = text.find("\n", start)
        return n if end < 0 else end

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            i = skip_comment(i)
        else:
            m = _IDENT.match(text, i)
            if not m:
                raise CMakeSyntaxError(f"{file}:{line}: unexpected {c!r}")
            name, cmd_line = m.group(0), line
            i = m.end()
            while i < n and text[i] in " \t":
                i += 1
            if i >= n or text[i] != "(":
                raise CMakeSyntaxError(f"{file}:{line}: expected '(' after {name}")
            i += 1
            args: list[Arg] = []
            depth = 0
            while True:
                if i >= n:
                    raise CMakeSyntaxError(f"{file}:{cmd_line}: unterminated {name}(")
                c = text[i]
                if c == "\n":
                    line += 1
                    i += 1
                elif c in " \t\r":
                    i += 1
                elif c == "#":
                    i = skip_comment(i)
                elif c == "(":
                    # Nested parentheses are arguments of their own (if() groups with them).
                    depth += 1
                    args.append(Arg("(", "unquoted"))
                    i += 1
                elif c == ")":
                    if depth == 0:
                        i += 1
                        break
                    depth -= 1
                    args.append(Arg(")", "unquoted"))
                    i += 1
                elif c == "[" and _BRACKET_OPEN.match(text, i):
                    m2 = _BRACKET_OPEN.match(text, i)
                    assert m2 is not None
                    end = skip_bracket(i)
                    body = text[m2.end():end - len(m2.group(1)) - 2]
                    if body.startswith("\n"):  # CMake drops a newline right after `[[`
                        body = body[1:]
                    args.append(Arg(body, "bracket"))
                    i = end
                elif c == '"':
                    j = i + 1
                    while j < n and text[j] != '"':
                        if text[j] == "\\":
                            j += 1
                        j += 1
                    if j >= n:
                        raise CMakeSyntaxError(f"{file}:{line}: unterminated quoted argument")
                    body = text[i + 1:j]
                    line += body.count("\n")
                    args.append(Arg(body, "quoted"))
                    i = j + 1
                else:
                    j = i
                    while j < n and text[j] not in ' \t\r\n()#"':
                        j += 2 if text[j] == "\\" else 1
                    # legacy form -DX="a b": a quoted run glued to an unquoted argument
                    while j < n and text[j] == '"' and j > i:
                        k = j + 1
                        while k < n and text[k] != '"':
                            k += 2 if text[k] == "\\" else 1
                        j = k + 1
                        while j < n and text[j] not in ' \t\r\n()#"':
                            j += 2 if text[j] == "\\" else 1
                    args.append(Arg(text[i:j], "unquoted"))
                    i = j
            commands.append(Command(name.lower(), tuple(args), file, cmd_line))
    return commands


# ------------------------------------------------------------------ text-level readers
# For the readers that search a CMake file's text with patterns (fetchcontent.discover,
# trial.release): the same lexical rules as tokenize() above, so a `#` or a parenthesis
# inside a quoted or bracket argument is text, and a bracket comment `#[==[ ... ]==]`
# spans lines.


def _bracket_at(text: str, i: int) -> re.Match[str] | None:
    """A bracket argument opens at `i` (as in tokenize(): only where an argument starts)."""
    if i > 0 and text[i - 1] not in " \t\r\n(":
        return None
    return _BRACKET_OPEN.match(text, i)


def _skip_quoted(text: str, i: int) -> int:
    """`i` at an opening `"`: the index after the closing one (or the end of the text)."""
    j = i + 1
    while j < len(text) and text[j] != '"':
        j += 2 if text[j] == "\\" else 1
    return min(j + 1, len(text))


def _skip_bracket(text: str, m: re.Match[str]) -> int:
    close = "]" + m.group(1) + "]"
    end = text.find(close, m.end())
    return len(text) if end < 0 else end + len(close)


def strip_comments(text: str) -> str:
    """`text` without its comments (`# ...` to the end of the line, and bracket comments
    `#[[ ... ]]`, `#[==[ ... ]==]`), everything else kept: quoted and bracket arguments
    are not searched for `#`, and a removed comment keeps its newlines, so offsets'
    line numbers stay those of the file."""
    out: list[str] = []
    i, n, start = 0, len(text), 0
    while i < n:
        c = text[i]
        if c == '"':
            i = _skip_quoted(text, i)
        elif c == "[" and (m := _bracket_at(text, i)) is not None:
            i = _skip_bracket(text, m)
        elif c == "#":
            out.append(text[start:i])
            m = _BRACKET_OPEN.match(text, i + 1)
            if m is not None:
                end = _skip_bracket(text, m)
                out.append("\n" * text.count("\n", i, end))
            else:
                end = text.find("\n", i)
                end = n if end < 0 else end
            i = start = end
        else:
            i += 1
    out.append(text[start:])
    return "".join(out)


def parenthesized(text: str, start: int) -> str:
    """The text from `start` (just after an opening parenthesis) to its matching closing
    one, exclusive: nested parentheses are counted, those inside quoted or bracket
    arguments and comments are not. To the end of the text when it is not closed."""
    depth, i, n = 1, start, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = _skip_quoted(text, i)
            continue
        if c == "[" and (m := _bracket_at(text, i)) is not None:
            i = _skip_bracket(text, m)
            continue
        if c == "#":
            m = _BRACKET_OPEN.match(text, i + 1)
            if m is not None:
                i = _skip_bracket(text, m)
            else:
                end = text.find("\n", i)
                i = n if end < 0 else end
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return text[start:]


# ------------------------------------------------------------------------- block structure

@dataclass
class IfBlock:
    branches: list[tuple[tuple[Arg, ...] | None, list[Node]]]  # (condition or None=else, body)
    line: int
    file: Path


@dataclass
class LoopBlock:
    command: Command  # foreach(...) or while(...)
    body: list[Node]


@dataclass
class Definition:
    command: Command  # function(...) or macro(...)
    body: list[Node]


@dataclass
class Block:
    command: Command  # block(...)
    body: list[Node]


Node = Command | IfBlock | LoopBlock | Definition | Block

_ENDS = {"if": "endif", "foreach": "endforeach", "while": "endwhile",
         "function": "endfunction", "macro": "endmacro", "block": "endblock"}


def structure(commands: list[Command]) -> list[Node]:
    it = iter(commands)
    body, end = _structure(it, None)
    if end is not None:
        raise CMakeSyntaxError(f"{end.file}:{end.line}: unexpected {end.name}()")
    return body


def _structure(it: Iterator[Command], stop: set[str] | None) -> tuple[list[Node], Command | None]:
    nodes: list[Node] = []
    for cmd in it:
        if stop is not None and cmd.name in stop:
            return nodes, cmd
        if cmd.name == "if":
            branches: list[tuple[tuple[Arg, ...] | None, list[Node]]] = []
            cond: tuple[Arg, ...] | None = cmd.args
            while True:
                body, end = _structure(it, {"elseif", "else", "endif"})
                if end is None:
                    raise CMakeSyntaxError(f"{cmd.file}:{cmd.line}: if() without endif()")
                branches.append((cond, body))
                if end.name == "endif":
                    break
                cond = end.args if end.name == "elseif" else None
            nodes.append(IfBlock(branches, cmd.line, cmd.file))
        elif cmd.name in _ENDS:
            body, end = _structure(it, {_ENDS[cmd.name]})
            if end is None:
                raise CMakeSyntaxError(f"{cmd.file}:{cmd.line}: {cmd.name}() without "
                                       f"{_ENDS[cmd.name]}()")
            if cmd.name in ("foreach", "while"):
                nodes.append(LoopBlock(cmd, body))
            elif cmd.name == "block":
                nodes.append(Block(cmd, body))
            else:
                nodes.append(Definition(cmd, body))
        elif cmd.name in ("elseif", "else", "endif") or cmd.name in _ENDS.values():
            if stop is None:
                raise CMakeSyntaxError(f"{cmd.file}:{cmd.line}: unexpected {cmd.name}()")
            return nodes, cmd
        else:
            nodes.append(cmd)
    return nodes, None


def walk(nodes: list[Node]) -> Iterator[Command]:
    """Every command of a block, nested ones included (a syntactic view)."""
    for node in nodes:
        if isinstance(node, Command):
            yield node
        elif isinstance(node, IfBlock):
            for _, body in node.branches:
                yield from walk(body)
        else:
            yield node.command
            yield from walk(node.body)


# ---------------------------------------------------------------------------- expansion

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", ";": "\\;"}


def _expand(raw: str, lookup: Callable[[str], Value], env: Callable[[str], Value],
            escapes: bool) -> Value:
    """Variable references (${X}, nested; $ENV{X}; $CACHE{X}) and escape sequences."""
    out: list[str] = []
    unknown = False
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "\\" and escapes and i + 1 < n:
            nxt = raw[i + 1]
            out.append(_ESCAPES.get(nxt, nxt) if nxt != "\n" else "")
            i += 2
        elif c == "$" and (m := re.match(r"\$(ENV|CACHE)?\{", raw[i:])):
            # find the matching brace, expanding nested references first
            depth, j = 1, i + m.end()
            while j < n and depth:
                if raw[j] == "{":
                    depth += 1
                elif raw[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                out.append(raw[i:])
                break
            inner = _expand(raw[i + m.end():j - 1], lookup, env, escapes)
            if isinstance(inner, _Unknown):
                unknown = True
            else:
                kind = m.group(1)
                value = env(inner) if kind == "ENV" else lookup(("CACHE{" if kind else "")
                                                                + inner)
                if isinstance(value, _Unknown):
                    unknown = True
                else:
                    out.append(value)
            i = j
        else:
            out.append(c)
            i += 1
    return UNKNOWN if unknown else "".join(out)


def split_list(value: str) -> list[str]:
    """A CMake list: `;`-separated, `\\;` kept as a literal semicolon, empty items dropped
    (as in unquoted argument splitting)."""
    items = re.split(r"(?<!\\);", value)
    return [item.replace("\\;", ";") for item in items if item != ""]


@dataclass(frozen=True)
class Val:
    """An evaluated argument: its value (or UNKNOWN) and whether it was quoted."""
    value: Value
    quoted: bool


# -------------------------------------------------------------------------- conditions

_TRUE = {"1", "ON", "YES", "TRUE", "Y"}
_FALSE = {"0", "OFF", "NO", "FALSE", "N", "IGNORE", "NOTFOUND", ""}
_UNARY = {"EXISTS", "IS_DIRECTORY", "IS_ABSOLUTE", "IS_SYMLINK", "IS_READABLE",
          "IS_WRITABLE", "IS_EXECUTABLE", "COMMAND", "POLICY", "TARGET", "TEST", "DEFINED"}
_BINARY = {"STREQUAL", "STRLESS", "STRGREATER", "STRLESS_EQUAL", "STRGREATER_EQUAL",
           "EQUAL", "LESS", "GREATER", "LESS_EQUAL", "GREATER_EQUAL",
           "VERSION_EQUAL", "VERSION_LESS", "VERSION_GREATER", "VERSION_LESS_EQUAL",
           "VERSION_GREATER_EQUAL", "MATCHES", "IN_LIST", "IS_NEWER_THAN", "PATH_EQUAL"}


def constant_truth(text: str) -> Tri:
    """True/False for CMake's constants, None for anything else (a variable name)."""
    upper = text.upper()
    if upper in _TRUE:
        return True
    if upper in _FALSE or upper.endswith("-NOTFOUND"):
        return False
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        return float(text) != 0
    return None


def _not(a: Tri) -> Tri:
    return None if a is None else not a


def _and(a: Tri, b: Tri) -> Tri:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: Tri, b: Tri) -> Tri:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _version(text: str) -> list[int]:
    parts = []
    for comp in text.split("."):
        m = re.match(r"\d*", comp)
        parts.append(int(m.group(0)) if m and m.group(0) else 0)
    return parts


def _cmp(a: list[int] | float | str, b: list[int] | float | str, op: str) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        width = max(len(a), len(b))
        a = a + [0] * (width - len(a))
        b = b + [0] * (width - len(b))
    result: bool = {"EQUAL": a == b, "LESS": a < b, "GREATER": a > b,  # type: ignore[operator]
                    "LESS_EQUAL": a <= b, "GREATER_EQUAL": a >= b}[op]  # type: ignore[operator]
    return result


class Condition:
    """if()'s argument grammar (OR < AND < NOT < unary/binary tests < parentheses), each
    test three-valued."""

    def __init__(self, args: list[Val], interp: Interpreter) -> None:
        self.args = args
        self.pos = 0
        self.interp = interp

    def _peek_kw(self) -> str | None:
        if self.pos < len(self.args):
            a = self.args[self.pos]
            if not a.quoted and isinstance(a.value, str):
                return a.value
        return None

    def evaluate(self) -> Tri:
        if not self.args:
            return False
        result = self._or()
        if self.pos != len(self.args):
            return None  # an argument list this evaluator does not understand
        return result

    def _or(self) -> Tri:
        value = self._and()
        while self._peek_kw() == "OR":
            self.pos += 1
            value = _or(value, self._and())
        return value

    def _and(self) -> Tri:
        value = self._not()
        while self._peek_kw() == "AND":
            self.pos += 1
            value = _and(value, self._not())
        return value

    def _not(self) -> Tri:
        if self._peek_kw() == "NOT":
            self.pos += 1
            return _not(self._not())
        return self._test()

    def _take(self) -> Val:
        if self.pos >= len(self.args):
            return Val(UNKNOWN, False)
        a = self.args[self.pos]
        self.pos += 1
        return a

    def _test(self) -> Tri:
        kw = self._peek_kw()
        if kw == "(":
            self.pos += 1
            value = self._or()
            if self._peek_kw() == ")":
                self.pos += 1
            return value
        if kw in _UNARY and self.pos + 1 < len(self.args):
            self.pos += 1
            return self._unary(kw, self._take())
        left = self._take()
        op = self._peek_kw()
        if op in _BINARY and self.pos + 1 <= len(self.args) - 1:
            self.pos += 1
            return self._binary(op, left, self._take())
        return self._truth(left)

    def _unary(self, op: str, arg: Val) -> Tri:
        if isinstance(arg.value, _Unknown):
            return None
        if op == "DEFINED":
            name = arg.value
            if name.startswith("ENV{") and name.endswith("}"):
                return False  # no override variable is set when the plan is made
            if name.startswith("CACHE{") and name.endswith("}"):
                return True if name[6:-1] in self.interp.cache else None
            return self.interp.defined(name)
        if op == "COMMAND" and arg.value.lower() in self.interp.functions:
            return True
        return None  # files, targets, policies: not known before the configure

    def _operand(self, arg: Val) -> Value:
        """A binary operand: an unquoted name of a variable is replaced by its value; an
        undefined variable-like name is unknown (a configure defines more than we do)."""
        if isinstance(arg.value, _Unknown) or arg.quoted:
            return arg.value
        if _IDENT.fullmatch(arg.value):
            value = self.interp.lookup(arg.value, missing=None)
            if value is None:
                return UNKNOWN if constant_truth(arg.value) is None else arg.value
            return "" if value == UNSET else value
        return arg.value

    def _binary(self, op: str, left: Val, right: Val) -> Tri:
        if op == "IN_LIST":
            item = self._operand(left)
            if isinstance(right.value, _Unknown) or isinstance(item, _Unknown):
                return None
            items = self.interp.lookup(right.value, missing=None)
            if items is None or isinstance(items, _Unknown):
                return None
            return item in split_list("" if items == UNSET else items)
        a, b = self._operand(left), self._operand(right)
        if isinstance(a, _Unknown) or isinstance(b, _Unknown):
            return None
        if op == "STREQUAL":
            return a == b
        if op.startswith("STR"):
            return _cmp(a, b, op[3:])
        if op == "MATCHES":
            try:
                return re.search(b, a) is not None
            except re.error:
                return None
        if op.startswith("VERSION_"):
            return _cmp(_version(a), _version(b), op[8:])
        if op in ("EQUAL", "LESS", "GREATER", "LESS_EQUAL", "GREATER_EQUAL"):
            try:
                return _cmp(float(a), float(b), op)
            except ValueError:
                return False  # CMake: a non-number compares false
        return None  # IS_NEWER_THAN, PATH_EQUAL: files/paths, not evaluated

    def _truth(self, arg: Val) -> Tri:
        if isinstance(arg.value, _Unknown):
            return None
        const = constant_truth(arg.value)
        if const is not None:
            return const
        if arg.quoted:
            return False  # a quoted non-constant is not a variable name (CMP0054)
        value = self.interp.lookup(arg.value, missing=None)
        if value is None or isinstance(value, _Unknown):
            return None
        if value == UNSET:
            return False
        truth = constant_truth(value)
        return True if truth is None else truth


# --------------------------------------------------------------------------- interpreter

class _Stop(Exception):  # noqa: N818 - control flow, not an error
    """A path that ends: return(), break(), continue(), message(FATAL_ERROR)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Fetch:
    """One FetchContent_Declare/Populate that downloads, as the evaluation reached it."""
    name: str
    fields: dict[str, Value]  # GIT_REPOSITORY, GIT_TAG, URL, URL_HASH, SOURCE_SUBDIR
    command: Command
    override_env: str | None  # from the enclosing if-chain


@dataclass
class _Frame:
    block: IfBlock
    index: int  # the branch being run (len(branches) = the implicit empty else)


# Commands that never set a variable: run as no-ops. Any other command this evaluator does
# not implement may set variables it is given by name, so those become unknown.
_NO_EFFECT = {
    "message", "install", "add_custom_target", "add_custom_command", "add_library",
    "add_executable", "add_dependencies", "target_compile_definitions",
    "target_compile_options", "target_include_directories", "target_link_libraries",
    "target_link_options", "target_sources", "set_target_properties",
    "set_source_files_properties", "set_property", "include_directories",
    "add_compile_definitions", "add_compile_options", "add_link_options",
    "link_directories", "cmake_minimum_required", "cmake_policy", "enable_language",
    "fetchcontent_makeavailable", "fetchcontent_getproperties", "add_definitions",
    "set_directory_properties", "mark_as_advanced", "enable_testing", "add_test",
}
_FETCH_KEYS = ("GIT_REPOSITORY", "GIT_TAG", "URL", "URL_HASH", "SOURCE_SUBDIR")
_MAX_DEPTH = 64


class Interpreter:
    def __init__(self, tree: Path, known: Mapping[str, str]) -> None:
        self.tree = tree.resolve()
        self.scopes: list[dict[str, Value]] = [{}]
        # -D values given at plan time are cache entries: set(X ... CACHE) keeps them.
        self.cache: dict[str, Value] = dict(known)
        self.functions: dict[str, Definition] = {}
        self.fetches: list[Fetch] = []
        self.frames: list[_Frame] = []
        self.env_assigned: dict[str, str] = {}  # variable -> ENV var it is set from
        self.depth = 0
        self.parsed: dict[Path, list[Node]] = {}
        root = str(self.tree)
        for var in ("CMAKE_SOURCE_DIR", "CMAKE_CURRENT_SOURCE_DIR", "PROJECT_SOURCE_DIR",
                    "CMAKE_CURRENT_LIST_DIR"):
            self.scopes[0][var] = root

    # -- variables

    @property
    def vars(self) -> dict[str, Value]:
        return self.scopes[-1]

    def lookup(self, name: str, missing: Value | None = UNKNOWN) -> Value | None:
        """A variable's value: the scope's binding, else its cache entry; `missing`
        for a variable never defined (unknown: a configure defines more than we do)."""
        if name.startswith("CACHE{") and name.endswith("}"):
            return self.cache.get(name[6:-1], missing)
        if name in self.vars:
            return self.vars[name]
        return self.cache.get(name, missing)

    def defined(self, name: str) -> Tri:
        value = self.lookup(name, missing=None)
        if value is None:
            return None
        if value == UNSET:
            return name in self.cache
        return True if isinstance(value, str) else None

    def _get(self, name: str) -> Value:
        value = self.lookup(name)
        assert value is not None
        return "" if value == UNSET else value

    def expand(self, arg: Arg) -> list[Val]:
        if arg.kind == "bracket":
            return [Val(arg.text, True)]
        value = _expand(arg.text, self._get, lambda _name: "", escapes=True)
        if arg.kind == "quoted":
            return [Val(value, True)]
        if isinstance(value, _Unknown):
            return [Val(UNKNOWN, False)]
        return [Val(item, False) for item in split_list(value)]

    def expand_all(self, args: tuple[Arg, ...]) -> list[Val]:
        return [v for a in args for v in self.expand(a)]

    # -- running

    def parse(self, path: Path) -> list[Node]:
        if path not in self.parsed:
            nodes = structure(tokenize(path.read_text(encoding="utf-8", errors="replace"),
                                       path))
            for cmd in walk(nodes):
                # `set(VAR $ENV{X})` names X as an override of VAR even where the plan
                # does not run it (no environment variable is set at plan time).
                if cmd.name == "set" and len(cmd.args) >= 2 and \
                        (m := re.fullmatch(r"\$ENV\{(\w+)\}", cmd.args[1].text)):
                    self.env_assigned.setdefault(cmd.args[0].text, m.group(1))
            self.parsed[path] = nodes
        return self.parsed[path]

    def run_file(self, path: Path) -> None:
        nodes = self.parse(path)
        saved = {k: self.vars.get(k) for k in ("CMAKE_CURRENT_LIST_DIR", "CMAKE_CURRENT_LIST_FILE")}
        self.vars["CMAKE_CURRENT_LIST_DIR"] = str(path.parent)
        self.vars["CMAKE_CURRENT_LIST_FILE"] = str(path)
        try:
            self.run(nodes)
        finally:
            for k, v in saved.items():
                if v is None:
                    self.vars.pop(k, None)
                else:
                    self.vars[k] = v

    def run(self, nodes: list[Node]) -> None:
        for node in nodes:
            if isinstance(node, Command):
                self.command(node)
            elif isinstance(node, IfBlock):
                self.run_if(node)
            elif isinstance(node, LoopBlock):
                self.run_loop(node)
            elif isinstance(node, Definition):
                vals = self.expand_all(node.command.args)
                if vals and isinstance(vals[0].value, str):
                    self.functions[vals[0].value.lower()] = node
            else:
                self.run(node.body)

    def _possible_branches(self, block: IfBlock) -> list[int]:
        """The branches that can run: up to the first certainly-true condition, skipping
        certainly-false ones; len(branches) stands for "none of them" (no else)."""
        possible: list[int] = []
        for index, (cond, _body) in enumerate(block.branches):
            truth: Tri = True if cond is None else Condition(self.expand_all(cond), self).evaluate()
            if truth is True:
                possible.append(index)
                return possible
            if truth is None:
                possible.append(index)
        possible.append(len(block.branches))
        return possible

    def run_if(self, block: IfBlock) -> None:
        possible = self._possible_branches(block)
        self._run_paths(block, possible, lambda i: self.run(block.branches[i][1])
                        if i < len(block.branches) else None)

    def _run_paths(self, block: IfBlock | None, paths: list[int],
                   body: Callable[[int], None]) -> None:
        if len(paths) == 1:
            self._run_in_frame(block, paths[0], body)
            return
        # Several possible paths: run each on a copy of the variables, then merge (a
        # variable they leave different is unknown afterwards).
        start = ([dict(s) for s in self.scopes], dict(self.cache))
        ends: list[tuple[list[dict[str, Value]], dict[str, Value]]] = []
        stops: list[str] = []
        for path in paths:
            self.scopes = [dict(s) for s in start[0]]
            self.cache = dict(start[1])
            try:
                self._run_in_frame(block, path, body)
                ends.append((self.scopes, self.cache))
            except _Stop as stop:
                stops.append(stop.kind)
        if not ends:
            # Every path ends: the one that skips the least code stands for them all.
            self.scopes, self.cache = [dict(s) for s in start[0]], dict(start[1])
            raise _Stop(next(k for k in ("continue", "break", "return", "fatal")
                             if k in stops))
        self.scopes = [_merge([e[0][level] for e in ends]) for level in range(len(start[0]))]
        self.cache = _merge([e[1] for e in ends])

    def _run_in_frame(self, block: IfBlock | None, index: int, body: Callable[[int], None]
                      ) -> None:
        if block is not None:
            self.frames.append(_Frame(block, index))
        try:
            body(index)
        finally:
            if block is not None:
                self.frames.pop()

    def run_loop(self, loop: LoopBlock) -> None:
        cmd = loop.command
        if cmd.name == "foreach":
            vals = self.expand_all(cmd.args)
            if not vals or isinstance(vals[0].value, _Unknown):
                return
            var = vals[0].value
            items = self._foreach_items(vals[1:])
            if items is not None:
                for item in items:
                    self.vars[var] = item
                    try:
                        self.run(loop.body)
                    except _Stop as stop:
                        if stop.kind == "break":
                            break
                        if stop.kind != "continue":
                            raise
                return
            self.vars[var] = UNKNOWN
        # Unknown items (or a while condition): the body runs once, or not at all.
        def once(i: int) -> None:
            if i == 0:
                try:
                    self.run(loop.body)
                except _Stop as stop:
                    if stop.kind not in ("break", "continue"):
                        raise
        self._run_paths(None, [0, 1], once)

    def _foreach_items(self, vals: list[Val]) -> list[str] | None:
        if vals and vals[0].value == "IN" and not vals[0].quoted:
            items: list[str] = []
            mode = None
            for v in vals[1:]:
                if not v.quoted and v.value in ("LISTS", "ITEMS", "ZIP_LISTS"):
                    mode = v.value
                    if mode == "ZIP_LISTS":
                        return None
                    continue
                if isinstance(v.value, _Unknown):
                    return None
                if mode == "LISTS":
                    value = self.lookup(v.value)
                    if isinstance(value, _Unknown) or value is None:
                        return None
                    items += split_list("" if value == UNSET else value)
                else:
                    items.append(v.value)
            return items
        if vals and vals[0].value == "RANGE" and not vals[0].quoted:
            try:
                nums = [int(str(v.value)) for v in vals[1:]]
            except ValueError:
                return None
            start, stop, step = (0, nums[0], 1) if len(nums) == 1 else \
                (nums[0], nums[1], nums[2] if len(nums) > 2 else 1)
            return [str(x) for x in range(start, stop + 1, step)]
        if any(isinstance(v.value, _Unknown) for v in vals):
            return None
        return [str(v.value) for v in vals]

    def command(self, cmd: Command) -> None:
        name = cmd.name
        if name in self.functions:
            self.call(self.functions[name], cmd)
            return
        vals = self.expand_all(cmd.args)
        if name == "set":
            self.cmd_set(vals)
        elif name == "unset":
            if vals and isinstance(vals[0].value, str):
                if len(vals) > 1 and vals[1].value == "CACHE":
                    self.cache.pop(vals[0].value, None)
                else:
                    self.vars[vals[0].value] = UNSET
        elif name == "option":
            if len(vals) >= 1 and isinstance(vals[0].value, str) and vals[0].value not in self.cache:
                default = vals[2].value if len(vals) > 2 else "OFF"
                self.cache[vals[0].value] = default
        elif name == "list":
            self.cmd_list(vals)
        elif name == "include":
            self.cmd_include(vals)
        elif name == "add_subdirectory":
            self.cmd_add_subdirectory(vals)
        elif name in ("return", "break", "continue"):
            raise _Stop(name)
        elif name == "message":
            if vals and vals[0].value in ("FATAL_ERROR", "SEND_ERROR") and not vals[0].quoted:
                raise _Stop("fatal")
        elif name in ("fetchcontent_declare", "fetchcontent_populate"):
            self.cmd_fetch(cmd, vals)
        elif name in _NO_EFFECT:
            pass
        else:
            # Not evaluated (string(), file(), find_package(), cmake_parse_arguments(),
            # ...): every variable it is given by name may now hold anything.
            for v in vals:
                if isinstance(v.value, str) and _IDENT.fullmatch(v.value):
                    self.vars[v.value] = UNKNOWN

    def cmd_set(self, vals: list[Val]) -> None:
        if not vals or isinstance(vals[0].value, _Unknown):
            return
        var, rest = vals[0].value, vals[1:]
        parent = False
        if rest and not rest[-1].quoted and rest[-1].value == "PARENT_SCOPE":
            parent, rest = True, rest[:-1]
        cache_at = next((i for i, v in enumerate(rest) if not v.quoted and v.value == "CACHE"),
                        None)
        if cache_at is not None:
            force = any(not v.quoted and v.value == "FORCE" for v in rest[cache_at:])
            value = _join(rest[:cache_at])
            if var not in self.cache or force:
                self.cache[var] = value
            # CMP0126 NEW: a normal binding stays as it is
            return
        value = _join(rest) if rest else UNSET
        if parent:
            if len(self.scopes) > 1:
                self.scopes[-2][var] = value
            return
        self.vars[var] = value

    def cmd_list(self, vals: list[Val]) -> None:
        if len(vals) < 2 or isinstance(vals[1].value, _Unknown):
            return
        op, var = str(vals[0].value).upper(), vals[1].value
        if op in ("APPEND", "PREPEND"):
            current = self.lookup(var, missing=UNSET)
            new = [v.value for v in vals[2:]]
            if isinstance(current, _Unknown) or any(isinstance(x, _Unknown) for x in new):
                self.vars[var] = UNKNOWN
                return
            old = split_list("" if current == UNSET else str(current))
            items = [str(x) for x in new]
            self.vars[var] = ";".join(old + items if op == "APPEND" else items + old)
        elif op in ("LENGTH", "GET", "FIND", "JOIN", "SUBLIST"):
            if isinstance(vals[-1].value, str):
                self.vars[vals[-1].value] = UNKNOWN
        else:  # REMOVE_*, FILTER, TRANSFORM, SORT, ...: the list may change
            self.vars[var] = UNKNOWN

    def cmd_include(self, vals: list[Val]) -> None:
        if not vals or isinstance(vals[0].value, _Unknown):
            return
        target = vals[0].value
        if "/" not in target and not target.endswith(".cmake"):
            return  # a CMake module (FetchContent, CheckCXXCompilerFlag): not ours
        base = Path(str(self._get("CMAKE_CURRENT_SOURCE_DIR")))
        path = (base / target).resolve()
        if not path.is_file() or not path.is_relative_to(self.tree) or \
                self.depth >= _MAX_DEPTH:
            return
        self.depth += 1
        try:
            self.run_file(path)
        except _Stop as stop:
            if stop.kind != "return":  # return() in an included file ends only that file
                raise
        finally:
            self.depth -= 1

    def cmd_add_subdirectory(self, vals: list[Val]) -> None:
        if not vals or isinstance(vals[0].value, _Unknown):
            return
        base = Path(str(self._get("CMAKE_CURRENT_SOURCE_DIR")))
        sub = (base / vals[0].value).resolve()
        listfile = sub / "CMakeLists.txt"
        if not listfile.is_file() or not sub.is_relative_to(self.tree) or \
                self.depth >= _MAX_DEPTH:
            return
        self.scopes.append(dict(self.vars))
        self.vars["CMAKE_CURRENT_SOURCE_DIR"] = str(sub)
        self.depth += 1
        try:
            self.run_file(listfile)
        except _Stop as stop:
            if stop.kind != "return":
                raise
        finally:
            self.depth -= 1
            self.scopes.pop()

    def call(self, definition: Definition, cmd: Command) -> None:
        if self.depth >= _MAX_DEPTH:
            return
        params = [v.value for v in self.expand_all(definition.command.args)][1:]
        vals = self.expand_all(cmd.args)
        if any(isinstance(v.value, _Unknown) for v in vals):
            # The argument count is not known: bind what can be bound, ARGN unknown.
            argn: Value = UNKNOWN
        else:
            argn = ";".join(str(v.value) for v in vals[len(params):])
        bindings: dict[str, Value] = {}
        for i, p in enumerate(params):
            if isinstance(p, str):
                bindings[p] = vals[i].value if i < len(vals) else UNKNOWN
        bindings["ARGN"] = argn
        bindings["ARGC"] = str(len(vals)) if not isinstance(argn, _Unknown) else UNKNOWN
        bindings["ARGV"] = ";".join(str(v.value) for v in vals) \
            if not isinstance(argn, _Unknown) else UNKNOWN
        for i, v in enumerate(vals):
            bindings[f"ARGV{i}"] = v.value
        is_function = definition.command.name == "function"
        self.depth += 1
        if is_function:
            self.scopes.append({**self.vars, **bindings})
            try:
                self.run(definition.body)
            except _Stop as stop:
                if stop.kind != "return":
                    raise
            finally:
                self.scopes.pop()
                self.depth -= 1
        else:
            # A macro runs in the caller's scope; its parameters are replaced text, not
            # variables, so they are restored afterwards.
            saved = {k: self.vars.get(k) for k in bindings}
            self.vars.update(bindings)
            try:
                self.run(definition.body)
            finally:
                for k, old in saved.items():
                    if old is None:
                        self.vars.pop(k, None)
                    else:
                        self.vars[k] = old
                self.depth -= 1

    # -- FetchContent

    def cmd_fetch(self, cmd: Command, vals: list[Val]) -> None:
        if len(vals) < 2 or isinstance(vals[0].value, _Unknown):
            return  # FetchContent_Populate(name): the declaration, already seen
        keys = {str(v.value) for v in vals[1:] if not v.quoted}
        if not keys & {"GIT_REPOSITORY", "URL"}:
            return  # SOURCE_DIR only: a local tree (an override), nothing downloaded
        fields: dict[str, Value] = {}
        for i, v in enumerate(vals[1:], start=1):
            if not v.quoted and v.value in _FETCH_KEYS and i + 1 < len(vals) and \
                    str(v.value) not in fields:
                fields[str(v.value)] = vals[i + 1].value
        self.fetches.append(Fetch(vals[0].value, fields, cmd, self.override_env(vals[0].value)))

    def override_env(self, name: str) -> str | None:
        """The environment variable tested by an enclosing if-chain whose other branch
        does not download `name` (innermost chain first)."""
        for frame in reversed(self.frames):
            tested = frame.block.branches[:frame.index + 1]
            envs: list[str] = []
            for cond, _ in tested:
                for arg in cond or ():
                    envs += re.findall(r"ENV\{(\w+)\}", arg.text)
                    for var in [arg.text, *re.findall(r"(?<!ENV)\{(\w+)\}", arg.text)]:
                        if var in self.env_assigned:
                            envs.append(self.env_assigned[var])
            if not envs:
                continue
            others = [body for i, (_, body) in enumerate(frame.block.branches)
                      if i != frame.index]
            if frame.block.branches[-1][0] is not None and \
                    frame.index < len(frame.block.branches):
                others.append([])  # no else(): falling through downloads nothing either
            if any(not _downloads(body, name) for body in others):
                return envs[0]
        return None


def _downloads(nodes: list[Node], name: str) -> bool:
    for cmd in walk(nodes):
        if cmd.name in ("fetchcontent_declare", "fetchcontent_populate") and cmd.args and \
                cmd.args[0].text.lower() == name.lower() and \
                any(a.text in ("GIT_REPOSITORY", "URL") for a in cmd.args[1:]):
            return True
    return False


def _join(vals: list[Val]) -> Value:
    if any(isinstance(v.value, _Unknown) for v in vals):
        return UNKNOWN
    return ";".join(str(v.value) for v in vals)


def _merge(states: list[dict[str, Value]]) -> dict[str, Value]:
    """Variables after several possible paths: a value all of them agree on, else unknown."""
    merged = dict(states[0])
    for other in states[1:]:
        differ = {k for k, v in other.items() if merged.get(k) != v}
        differ |= merged.keys() - other.keys()
        for key in differ:
            merged[key] = UNKNOWN
    return merged


@dataclass
class Evaluation:
    fetches: list[Fetch] = field(default_factory=list)
    ended: str | None = None  # "fatal"/"return" when the top level stopped early


def evaluate(tree: Path, known: Mapping[str, str]) -> Evaluation:
    """Run `tree`/CMakeLists.txt with the `known` variables (cache entries, as -D gives)."""
    interp = Interpreter(tree, known)
    ended = None
    listfile = tree / "CMakeLists.txt"
    if listfile.is_file():
        try:
            interp.run_file(listfile.resolve())
        except _Stop as stop:
            ended = stop.kind
    return Evaluation(interp.fetches, ended)
