"""A service name from a command line, for processes whose executable says nothing of the app.

Interpreters are named after what they run: `python3.11 app.py` -> `app`, `python -m uvicorn
myservice.main:app` and `gunicorn myapp.wsgi:application` -> the app's package (`myservice`,
`myapp`), `node server.js` -> `server`, `java -jar orders-1.4.0.jar` -> `orders`, `java
com.acme.Main` -> `com.acme.Main` (the full class name: `Main` alone says nothing). Pure functions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# What an option's value, or the first argument that is not an option, is.
SCRIPT, MODULE, JAR, CLASS, CODE = "script", "module", "jar", "class", "code"


@dataclass(frozen=True, slots=True)
class Interpreter:
    executable: re.Pattern[str]  # its executable's name (fullmatch)
    programs: Mapping[str, str]  # options whose value is the program, and of which kind (CODE: inline, no name)
    valued: frozenset[str] = frozenset()  # other options whose value may be the next argument
    positional: str = SCRIPT  # what the first argument that is not an option is
    clustered: bool = False  # single-letter options combine and take attached values: `-um x`, `-Ilib`
    subcommands: frozenset[str] = frozenset()  # words before the program: `dotnet exec x.dll`
    suffix: str = ""  # a positional program must end with it (`dotnet run` is the SDK, not an app)


INTERPRETERS = (
    Interpreter(re.compile(r"(?:python|pypy)[0-9.]*[a-z]?(?:-c)?"), {"-c": CODE, "-m": MODULE},
                frozenset({"-W", "-X", "--check-hash-based-pycs"}), clustered=True),
    Interpreter(re.compile(r"nodejs|node"), {"-e": CODE, "--eval": CODE, "-p": CODE, "--print": CODE},
                frozenset({"-r", "--require", "--import", "--loader", "--experimental-loader", "-C",
                           "--conditions", "--env-file", "--title", "--input-type", "--disable-warning",
                           "--watch-path", "--redirect-warnings", "--openssl-config", "--icu-data-dir"})),
    Interpreter(re.compile(r"bun"), {"-e": CODE, "--eval": CODE, "-p": CODE, "--print": CODE},
                frozenset({"-r", "--preload", "--cwd", "--env-file", "--config", "-c"}),
                subcommands=frozenset({"run"})),
    Interpreter(re.compile(r"java"), {"-jar": JAR, "-m": MODULE, "--module": MODULE},
                frozenset({"-cp", "-classpath", "--class-path", "-p", "--module-path", "--upgrade-module-path",
                           "--add-modules", "--add-exports", "--add-opens", "--add-reads", "--patch-module",
                           "--limit-modules", "--enable-native-access", "--source"}), positional=CLASS),
    Interpreter(re.compile(r"ruby[0-9.]*"), {"-e": CODE, "-S": SCRIPT},
                frozenset({"-I", "-r", "-C", "-E", "--encoding"}), clustered=True),
    Interpreter(re.compile(r"php[0-9.]*"), {"-r": CODE, "-f": SCRIPT},
                frozenset({"-c", "-d", "-S", "-t", "-z"}), clustered=True),
    Interpreter(re.compile(r"perl[0-9.]*"), {"-e": CODE, "-E": CODE}, frozenset({"-I", "-M", "-m"}), clustered=True),
    Interpreter(re.compile(r"dotnet"), {},
                frozenset({"--additionalprobingpath", "--additional-deps", "--depsfile", "--runtimeconfig",
                           "--fx-version", "--roll-forward"}), subcommands=frozenset({"exec"}), suffix=".dll"),
)

# App servers an interpreter runs as a script or module, and how they are told the app.
SPEC_SERVERS = frozenset({"gunicorn", "uvicorn", "hypercorn", "daphne", "granian", "waitress-serve"})  # `module:attr`
APP_OPTION_SERVERS = frozenset({"celery", "flask"})  # `-A module` / `--app module`

_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?::[A-Za-z_][\w.]*(?:\(.*\))?)?")
# Servers that retitle their processes (setproctitle, $0) keep the app in brackets.
_TITLE = re.compile(r"(?:gunicorn|puma)\b.*\[(?P<app>[^\]\s]+)\]")
_JAR_VERSION = re.compile(r"-[0-9][\w.-]*$")  # orders-0.0.1-SNAPSHOT: the version is service.version's
_NAME = re.compile(r"[A-Za-z_][\w.-]*")


def interpreter(executable: str) -> Interpreter | None:
    return next((i for i in INTERPRETERS if i.executable.fullmatch(executable)), None)


def app_name(executable: str, argv: Sequence[str]) -> str:
    """What the command line `argv` of an interpreter `executable` runs, as a service name; ''
    for other executables and for inline code or a REPL."""
    interp = interpreter(executable)
    if interp is None or not argv:
        return ""
    if interp.executable.fullmatch(os.path.basename(argv[0])):
        kind, value, rest = _program(interp, argv[1:])
        name = _name(kind, value, rest)
    else:
        name = _title_name(argv)  # the process rewrote its command line
    return name if _NAME.fullmatch(name) else ""


def _program(interp: Interpreter, args: Sequence[str]) -> tuple[str, str, Sequence[str]]:
    """(kind, value, arguments after it) of the program the interpreter's arguments name."""
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in interp.subcommands:
            continue
        if arg == "--" and i < len(args):
            arg = args[i]
            i += 1
        elif arg.startswith("-") and arg != "-":
            option, value = _option(interp, arg)
            if option not in interp.programs and option not in interp.valued:
                continue  # a flag
            if value is None:
                if i == len(args):
                    break
                value = args[i]
                i += 1
            if option in interp.programs:
                return interp.programs[option], value, args[i:]
            continue
        if not arg.endswith(interp.suffix):
            break
        return interp.positional, arg, args[i:]
    return "", "", ()  # inline code, a REPL


def _option(interp: Interpreter, arg: str) -> tuple[str, str | None]:
    """(option, attached value or None) of `arg`: `--app=x`, `-mhttp.server`, `-um` (u a flag)."""
    if arg in interp.programs or arg in interp.valued:
        return arg, None
    if arg.startswith("--"):
        option, _, value = arg.partition("=")
        return option, value
    if interp.clustered:
        for j, letter in enumerate(arg[1:], start=2):
            option = "-" + letter
            if option in interp.programs or option in interp.valued:
                return option, arg[j:] or None
    return arg, ""


def _name(kind: str, value: str, rest: Sequence[str]) -> str:
    if kind == SCRIPT:
        stem = os.path.splitext(os.path.basename(value.rstrip("/")))[0]
        return _server_app(stem, rest) or stem
    if kind == MODULE:
        module = value.split("/", 1)[0]  # java: module/class
        server = _server_app(module, rest)
        return server or module.removesuffix(".__main__").removesuffix(".main")
    if kind == JAR:
        return _JAR_VERSION.sub("", os.path.splitext(os.path.basename(value))[0])
    if kind == CLASS:
        return value.removesuffix(".java")  # java Main.java: a single-file source program
    return ""


def _server_app(server: str, args: Sequence[str]) -> str:
    """The app an app server runs, by its package; '' when `server` is none or its app is not on
    the command line (a config file)."""
    if server in APP_OPTION_SERVERS:
        return package(_app_option(args))
    if server in SPEC_SERVERS:
        return package(_app_spec(args))
    return ""


def _app_option(args: Sequence[str]) -> str:
    for i, arg in enumerate(args):
        if arg in ("-A", "--app"):
            return args[i + 1] if i + 1 < len(args) else ""
        if arg.startswith("--app="):
            return arg.removeprefix("--app=")
        if arg.startswith("-A"):
            return arg.removeprefix("-A")
    return ""


def _app_spec(args: Sequence[str]) -> str:
    """The `module:attr` among the arguments, without knowing the server's options: a value such
    as `-k uvicorn.workers.UvicornWorker` also looks like a module, so `x:y` forms not after an
    option come first, then bare modules not after an option, then `x:y` after a flag."""
    ranked: list[tuple[int, int, str]] = []
    for i, arg in enumerate(args):
        if _SPEC.fullmatch(arg):
            prev = args[i - 1] if i else ""
            after_option = prev.startswith("-") and prev != "-" and "=" not in prev
            rank = 2 * after_option + (":" not in arg)
            if rank < 3:
                ranked.append((rank, i, arg))
    return min(ranked)[2] if ranked else ""


def package(spec: str) -> str:
    """`myapp.wsgi:application` -> `myapp`, `src.orders.api:app` -> `orders`: the top package is
    the service, its module and object are not."""
    parts = spec.split(":", 1)[0].split(".")
    return parts[1] if parts[0] == "src" and len(parts) > 1 else parts[0]


def _title_name(argv: Sequence[str]) -> str:
    """`gunicorn: worker [myapp.wsgi:application]` -> `myapp`; otherwise the title's first word
    (`sidekiq 7.2.0 shop [0 of 5 busy]`, node's process.title)."""
    title = " ".join(argv).strip()
    match = _TITLE.fullmatch(title)
    if match:
        return package(match["app"])
    return title.split(maxsplit=1)[0].rstrip(":") if title else ""
