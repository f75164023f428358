"""The four command lines share one argument vocabulary, state their exit status, and answer --help at once."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cli_flags", ROOT / "docs" / "cli_flags.py")
assert _spec is not None and _spec.loader is not None
cli_flags = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_flags)

#: What answering ``--help`` must not load (seconds of imports: the issue measured 1.8 CPU-s before). NumPy
#: (~0.1 s) may load: ``fit`` and ``evaluate`` name constants of NumPy-only modules in their help.
HEAVY = ("numba", "lightgbm", "pandas", "sklearn", "scipy", "pyarrow", "joblib", "matplotlib", "kernel", "starlette",
         "uvicorn", "prometheus_client", "httpx", "aiohttp", "pyspark", "cryptography", "tqdm")


def _described(action: argparse.Action) -> tuple:
    """What a user sees of a flag: metavar, nargs, type, choices, default, required."""
    return (action.metavar, action.nargs, getattr(action.type, "__name__", action.type), repr(action.choices),
            repr(action.default), action.required)


def test_the_committed_table_is_what_the_parsers_say() -> None:
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == cli_flags.render(), \
        "docs/cli.md is stale: run python docs/cli_flags.py"


def test_a_flag_shared_by_several_commands_is_defined_alike_unless_the_table_says_why() -> None:
    table = {name: cli_flags.flags(parser) for name, parser in cli_flags.parsers().items()}
    shared = {flag for options in table.values() for flag in options
              if sum(flag in other for other in table.values()) > 1}
    assert {"--quiet", "--budget", "--data", "--models", "--seed", "--artifact", "--verify-key"} <= shared
    for flag in sorted(shared):
        seen = {_described(options[flag]) for options in table.values() if flag in options}
        helps = {" ".join(options[flag].help.split()) for options in table.values() if flag in options}
        if flag in cli_flags.DIFFERENCES:
            continue
        assert len(seen) == 1, f"{flag} differs between commands: {seen}"
        assert len(helps) == 1, f"{flag} has different help texts: {helps}"
    assert set(cli_flags.DIFFERENCES) <= shared, "a documented difference names a flag that is not shared"


@pytest.mark.parametrize("command", ["fit", "evaluate", "score", "serve"])
def test_help_states_exit_status_and_no_contradictory_default(command: str) -> None:
    parser = cli_flags.parsers()[command]
    text = parser.format_help()
    assert parser.epilog and parser.epilog.startswith("exit status: 0 on success") and "2 on bad input" in parser.epilog
    assert "(default: None)" not in text and "(default: False)" not in text
    for action in parser._actions:
        shown = parser._get_formatter()._expand_help(action) if action.help else ""
        assert shown.count("default:") <= 1, f"{command} {action.option_strings}: two defaults in {shown!r}"
        if action.required:
            assert "default:" not in shown, f"{command} {action.option_strings}: a required flag with a default"
        if action.option_strings and action.help is not argparse.SUPPRESS:
            assert action.help, f"{command} {action.option_strings} has no help"


def test_the_hull_is_printed_as_hull_not_linear() -> None:
    from training.metrics import auc_label

    assert auc_label("linear") == "hull" and auc_label("cascade_routing") == "cascade_routing"


def test_fit_split_flags_and_the_deprecated_alias() -> None:
    from training.fit import parse_args

    assert parse_args([]).fractions == (0.5, 0.25, 0.25)
    args = parse_args(["--train-fraction", "0.6", "--calibration-fraction", "0.3"])
    assert args.fractions == pytest.approx((0.6, 0.3, 0.1))
    assert parse_args(["--fractions", "0.4", "0.4", "0.2"]).fractions == (0.4, 0.4, 0.2)
    for argv in (["--fractions", "0.4", "0.4", "0.2", "--train-fraction", "0.5"],
                 ["--train-fraction", "0.6", "--calibration-fraction", "0.4"]):
        with pytest.raises(SystemExit) as stop:
            parse_args(argv)
        assert stop.value.code == 2


#: Every ``python -m`` command the README shows, with the arguments that ask for its help (or a usage error).
COMMANDS = [("training.fit", ["--help"]), ("training.evaluate", ["--help"]),
            ("training.evaluate", ["--logged", "DIR", "--help"]), ("training.score", ["--help"]),
            ("training.serve", ["--help"]), ("training.synthetic", ["--help"]), ("training.data", ["--help"]),
            ("training.data", ["append", "--help"]), ("training.keygen", ["--help"])]


def _run_as_main(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    """``python -m module *argv`` in a fresh interpreter, printing afterwards which heavy modules it loaded."""
    probe = ("import runpy, sys\n"
             f"sys.argv = [{module!r}, *{argv!r}]\n"
             "try:\n"
             f"    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
             "except SystemExit as stop:\n"
             "    print('EXIT', stop.code)\n"
             f"heavy = sorted(name for name in sys.modules if name.split('.')[0] in {HEAVY!r})\n"
             "print('HEAVY', heavy)\n")
    return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})


@pytest.mark.parametrize(("module", "argv"), COMMANDS, ids=[" ".join([m, *a]) for m, a in COMMANDS])
def test_help_loads_no_heavy_module(module: str, argv: list[str]) -> None:
    """``--help`` parses before importing the library (a fresh interpreter; times: bench/bench_cli_help.py)."""
    result = _run_as_main(module, argv)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2:] == ["EXIT 0", "HEAVY []"], lines[-2:]
    assert "usage: python -m" in result.stdout and "exit status: 0 on success" in result.stdout


def test_a_usage_error_loads_no_heavy_module_either() -> None:
    result = _run_as_main("training.score", ["--artifact", "router.joblib"])  # --input and --output missing
    assert result.stdout.strip().splitlines()[-2:] == ["EXIT 2", "HEAVY []"], result.stdout
    assert "the following arguments are required: --input, --output" in result.stderr


def test_the_parser_module_imports_nothing_heavy() -> None:
    probe = ("import sys\nimport training.cli as cli\n"
             "for name in cli.__all__:\n"
             "    if name.endswith('_parser'):\n"
             "        getattr(cli, name)()\n"
             f"print(sorted(name for name in sys.modules if name.split('.')[0] in {HEAVY!r}))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_latency_budget_on_a_router_without_latency_policies_says_so(router, artifact, tmp_path, capsys):
    """Not 'below every latency budget fitted ...: [None]' (issue 32): one line saying what is missing."""
    with pytest.raises(ValueError, match="no policy fitted to a latency budget"):
        router.policy(0.001, 0.6)
    from training.serving.batch import main as score
    from training.synthetic import make_benchmark

    traffic = tmp_path / "traffic.parquet"
    make_benchmark(20, seed=4).to_parquet(traffic)
    code = score(["--artifact", str(artifact), "--input", str(traffic), "--output", str(tmp_path / "o.parquet"),
                  "--budget", "0.001", "--latency-budget", "0.6", "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "no policy fitted to a latency budget" in error[0], error


def test_a_reject_reason_quotes_numbers_as_python_does(router):
    from training.serving.replay import score_batch
    from training.synthetic import make_benchmark

    frame = make_benchmark(3, seed=5)
    frame = frame[frame["model"].isin(router.models_)].reset_index(drop=True)
    frame.loc[0, "cost_usd"] = -1.0
    scored = score_batch(router, frame, parallel=False)
    reasons = scored.loc[scored["status"] == "rejected", "reason"].tolist()
    assert any("got -1.0" in reason for reason in reasons) and not any("np.float64" in r for r in reasons), reasons
