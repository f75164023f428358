"""Loading and validation of benchmark tables (training/data.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from estimators.table import RoutingTable
from training.data import coverage, fingerprint, read_prices, read_table


def long_frame() -> pd.DataFrame:
    """Three queries x three models, rows deliberately out of order."""
    rows = []
    costs = {"big": 0.01, "mid": 0.002, "small": 0.0001}
    for q, (prompt, task) in enumerate([("2+2?", "math"), ("Capital of France?", "qa"), ("", "qa")]):
        for m, (name, cost) in enumerate(costs.items()):
            rows.append(
                {
                    "query_id": f"q{q}",
                    "model": name,
                    "quality": float((q + m) % 2),
                    "cost_usd": cost * (1 + q),
                    "task": task,
                    "subtask": "",
                    "split": "train" if q < 2 else "test",
                    "prompt": prompt,
                    "response": "" if name == "small" else f"answer {q} {name}",
                    "input_tokens": 10.0 + q,
                    "output_tokens": np.nan if name == "big" else 3.0,
                    "logprob": -0.5 * m if q != 1 else np.nan,
                }
            )
    return pd.DataFrame(rows).iloc[::-1].reset_index(drop=True)


def assert_same(a: RoutingTable, b: RoutingTable) -> None:
    assert a.models == b.models
    assert list(a.query_ids) == list(b.query_ids)
    np.testing.assert_array_equal(a.quality, b.quality)
    np.testing.assert_array_equal(a.cost, b.cost)
    for name in ("prompts", "tasks", "subtasks", "splits", "responses"):
        assert (getattr(a, name) is None) == (getattr(b, name) is None), name
        if getattr(a, name) is not None:
            assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    for name in ("input_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.signals.keys() == b.signals.keys()
    for name in a.signals:
        np.testing.assert_array_equal(a.signals[name], b.signals[name])
    assert fingerprint(a) == fingerprint(b)


# --------------------------------------------------------------------------- #
# the happy path
# --------------------------------------------------------------------------- #


def test_long_frame_is_pivoted_sorted_and_complete():
    table = read_table(long_frame(), signal_columns=["logprob"])
    assert table.models == ("small", "mid", "big")  # by mean cost
    assert table.query_ids.tolist() == ["q0", "q1", "q2"]
    assert table.quality.dtype == np.float64 and table.cost.dtype == np.float64
    # quality of (q, model) was (q + position in the cost dict) % 2 with big=0, mid=1, small=2
    np.testing.assert_array_equal(table.quality, [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    np.testing.assert_allclose(table.cost[:, 2], [0.01, 0.02, 0.03])
    assert table.prompts.tolist() == ["2+2?", "Capital of France?", ""]
    assert table.tasks.tolist() == ["math", "qa", "qa"]
    assert table.splits.tolist() == ["train", "train", "test"]
    assert table.responses[0].tolist() == ["", "answer 0 mid", "answer 0 big"]
    assert np.isnan(table.output_tokens[:, 2]).all() and (table.output_tokens[:, :2] == 3).all()
    assert np.isnan(table.signals["logprob"][1]).all()  # NaN = not logged, kept
    np.testing.assert_array_equal(table.signals["logprob"][0], [-1.0, -0.5, 0.0])


def test_optional_columns_absent_are_none():
    frame = long_frame()[["query_id", "model", "quality", "cost_usd"]]
    table = read_table(frame)
    for name in ("prompts", "tasks", "subtasks", "splits", "responses", "input_tokens", "output_tokens"):
        assert getattr(table, name) is None, name
    assert table.signals == {}


def test_models_subset_keeps_only_those_and_resorts():
    table = read_table(long_frame(), models=["big", "small"])
    assert table.models == ("small", "big")
    full = read_table(long_frame())
    np.testing.assert_array_equal(table.quality, full.quality[:, [0, 2]])


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['huge'\].*\['big', 'mid', 'small'\]"):
        read_table(long_frame(), models=["small", "huge"])
    with pytest.raises(ValueError, match="list of model names"):
        read_table(long_frame(), models="small")


def test_models_subset_ignores_bad_rows_of_other_models():
    frame = long_frame()
    frame.loc[frame.model == "mid", "cost_usd"] = -1.0
    assert read_table(frame, models=["small", "big"]).n_models == 2


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz"])
def test_long_file_round_trip(tmp_path, suffix):
    frame = long_frame()
    path = tmp_path / f"table{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)  # empty strings become empty fields
    assert_same(read_table(path, signal_columns=["logprob"]), read_table(frame, signal_columns=["logprob"]))


def test_csv_keeps_empty_text_and_text_ids(tmp_path):
    frame = long_frame()
    frame["query_id"] = frame["query_id"].str.replace("q", "00")  # '000', '001': not numbers
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    table = read_table(path)
    assert table.query_ids.tolist() == ["000", "001", "002"]
    assert table.prompts[2] == ""
    assert table.subtasks is None  # '' for every query: carries nothing, so treated as absent


def test_fingerprint_changes_with_labels_and_order():
    table = read_table(long_frame())
    digest = fingerprint(table)
    assert len(digest) == 64 and digest == fingerprint(read_table(long_frame()))
    flipped = long_frame()
    flipped.loc[0, "quality"] = 1.0 - flipped.loc[0, "quality"]
    assert fingerprint(read_table(flipped)) != digest
    assert fingerprint(table.subset([1, 0, 2])) != digest
    assert fingerprint(table.select_models(["small", "mid"])) != digest


# --------------------------------------------------------------------------- #
# validation: every problem is a ValueError naming what is wrong and where
# --------------------------------------------------------------------------- #


def test_empty_input():
    with pytest.raises(ValueError, match="no rows"):
        read_table(long_frame().iloc[:0])


def test_missing_required_columns():
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['cost_usd'\]"):
        read_table(long_frame().drop(columns="cost_usd"))


def test_missing_signal_column():
    with pytest.raises(ValueError, match=r"signal column\(s\) \['verifier'\] not found"):
        read_table(long_frame(), signal_columns=["verifier"])
    with pytest.raises(ValueError, match="quality is the label"):
        read_table(long_frame(), signal_columns=["quality"])


def test_duplicated_pair_names_query_model_and_rows():
    frame = long_frame()
    frame = pd.concat([frame, frame.iloc[[4]]], ignore_index=True)
    q, m = frame.loc[4, "query_id"], frame.loc[4, "model"]
    with pytest.raises(ValueError, match=rf"query '{q}' / model '{m}' at rows \[4, 9\]"):
        read_table(frame)


def test_pair_without_a_row_is_not_logged_and_nothing_else_moves():
    frame = long_frame()
    full = read_table(frame)
    table = read_table(frame[~((frame.query_id == "q1") & frame.model.isin(["mid", "big"]))])
    q1 = list(table.query_ids).index("q1")
    absent = [list(table.models).index(m) for m in ("mid", "big")]
    expected = np.ones(full.quality.shape, dtype=bool)
    expected[q1, absent] = False
    assert table.models == full.models and list(table.query_ids) == list(full.query_ids)
    np.testing.assert_array_equal(table.logged, expected)
    assert np.isnan(table.quality[~expected]).all() and np.isnan(table.cost[~expected]).all()
    np.testing.assert_array_equal(table.quality[expected], full.quality[expected])
    np.testing.assert_array_equal(table.cost[expected], full.cost[expected])
    assert table.is_partial and not table.fully_logged[q1] and table.fully_logged.sum() == table.n_queries - 1
    assert [row["logged"] for row in coverage(table)] == [table.n_queries - (m in absent) for m in range(3)]


@pytest.mark.parametrize("bad", [-0.3, np.nan, np.inf, "free"])
def test_bad_cost_names_row_query_and_model(bad):
    frame = long_frame().astype({"cost_usd": object})
    frame.loc[5, "cost_usd"] = bad
    q, m = frame.loc[5, "query_id"], frame.loc[5, "model"]
    with pytest.raises(ValueError, match=rf"cost_usd must be .*1 row\(s\) fail: row 5 \(query '{q}', model '{m}'\)"):
        read_table(frame)


def test_cost_as_text_in_csv_names_row(tmp_path):
    frame = long_frame()
    frame["cost_usd"] = frame["cost_usd"].astype(object)
    frame.loc[[2, 7], "cost_usd"] = ["0.1 USD", ""]
    path = tmp_path / "bad.csv.gz"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"2 row\(s\) fail: row 2 .*'0.1 USD'; row 7 .*''"):
        read_table(path)


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.1])
def test_bad_quality_names_row_and_range(bad):
    frame = long_frame()
    frame.loc[3, "quality"] = bad
    m = frame.loc[3, "model"]
    with pytest.raises(ValueError, match=rf"quality must be a number in \[0, 1\].*row 3 \(query 'q\d', model '{m}'\)"):
        read_table(frame)


def test_quality_range_widens_the_check():
    frame = long_frame()
    frame["quality"] *= 100
    with pytest.raises(ValueError, match=r"\d+ row\(s\) fail"):
        read_table(frame)
    assert read_table(frame, quality_range=(0, 100)).quality.max() == 100


def test_non_numeric_signal_names_row_but_nan_is_fine():
    frame = long_frame().astype({"logprob": object})
    frame.loc[6, "logprob"] = "high"
    with pytest.raises(ValueError, match=r"signal column 'logprob' must be numeric.*row 6 .*'high'"):
        read_table(frame, signal_columns=["logprob"])


def test_many_offending_rows_are_counted_and_cut():
    frame = long_frame()
    frame["cost_usd"] = -1.0
    with pytest.raises(ValueError, match=r"9 row\(s\) fail: row 0 .*row 4 .* and 4 more$"):
        read_table(frame)


def test_empty_query_id_and_model():
    frame = long_frame()
    frame.loc[2, "query_id"] = ""
    with pytest.raises(ValueError, match=r"query_id is empty; 1 row\(s\) fail: row 2"):
        read_table(frame)
    frame = long_frame()
    frame.loc[1, "model"] = None
    with pytest.raises(ValueError, match=r"model is empty; 1 row\(s\) fail: row 1"):
        read_table(frame)


def test_per_query_text_must_agree_between_models():
    frame = long_frame()
    frame.loc[(frame.query_id == "q2") & (frame.model == "big"), "prompt"] = "other text"
    with pytest.raises(ValueError, match=r"column 'prompt' must be the same .*'q2'"):
        read_table(frame)


def test_bad_token_count():
    frame = long_frame()
    frame.loc[0, "input_tokens"] = -3
    with pytest.raises(ValueError, match=r"input_tokens must be a number >= 0.*row 0"):
        read_table(frame)


def test_unreadable_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "absent.parquet")
    (tmp_path / "table.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\.parquet, \.csv, \.csv\.gz or \.pkl"):
        read_table(tmp_path / "table.json")


# --------------------------------------------------------------------------- #
# wide RouterBench format
# --------------------------------------------------------------------------- #


def wide_frame() -> pd.DataFrame:
    """Two prompts in RouterBench's layout, prompts and responses as list reprs."""
    return pd.DataFrame(
        {
            "sample_id": ["arc.test.1", "arc.test.0"],
            "prompt": ["['Q: 1+1?', 'A) 2\\nB) 3']", "plain prompt [not a list"],
            "eval_name": ["arc", "arc"],
            "cheap": [1.0, 0.0],
            "cheap|model_response": ["['A']", "['B\\n']"],
            "cheap|total_cost": [1e-5, 2e-5],
            "pricey": [1.0, 1.0],
            "pricey|model_response": ["['A']", np.nan],
            "pricey|total_cost": [1e-3, 3e-3],
            "oracle_model_to_route_to": ["cheap", "pricey"],
        }
    )


def test_wide_routerbench_frame():
    table = read_table(wide_frame())
    assert table.models == ("cheap", "pricey")
    assert table.query_ids.tolist() == ["arc.test.0", "arc.test.1"]
    np.testing.assert_array_equal(table.quality, [[0, 1], [1, 1]])
    np.testing.assert_allclose(table.cost, [[2e-5, 3e-3], [1e-5, 1e-3]])
    assert table.prompts.tolist() == ["plain prompt [not a list", "Q: 1+1?\n\nA) 2\nB) 3"]
    assert table.responses.tolist() == [["B\n", ""], ["A", "A"]]
    assert table.tasks.tolist() == ["arc", "arc"]


def test_wide_csv_and_pickle(tmp_path):
    frame = wide_frame()
    frame.to_csv(tmp_path / "wide.csv", index=False)
    frame.to_pickle(tmp_path / "wide.pkl")
    expected = read_table(frame)
    assert_same(read_table(tmp_path / "wide.csv"), expected)
    assert_same(read_table(tmp_path / "wide.pkl", allow_pickle=True), expected)


class _Bomb:
    """Unpickling it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (self.marker,)


def test_a_pickle_is_refused_unless_allowed_and_never_opened(tmp_path, capsys):
    """Issue 30: --data x.pkl used to unpickle (run code) without a word."""
    import pickle

    from training.evaluate import main

    marker = tmp_path / "code-ran"
    (tmp_path / "x.pkl").write_bytes(pickle.dumps(_Bomb(marker)))
    with pytest.raises(ValueError, match="is a pickle, and reading it runs any code.*allow_pickle=True"):
        read_table(tmp_path / "x.pkl")
    assert main(["--data", str(tmp_path / "x.pkl")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a pandas DataFrame"):
        read_table(tmp_path / "x.pkl", allow_pickle=True)
    assert marker.exists(), "the witness works: allowed, the pickle is unpickled"


def test_a_huge_wide_cell_is_kept_as_text_not_parsed(monkeypatch):
    """Issue 30: a 10 MB list literal went through ast.literal_eval (8.5 CPU-s, +2.4 GiB); cells are capped."""
    import ast

    from training import data

    calls = []
    monkeypatch.setattr(ast, "literal_eval", lambda text: calls.append(len(text)) or [])
    frame = wide_frame()
    huge = repr(["x" * data.MAX_LISTED_CHARS])
    frame.loc[0, "cheap|model_response"] = huge
    read_table(frame)
    assert calls and max(calls) <= data.MAX_LISTED_CHARS
    assert len(huge) > data.MAX_LISTED_CHARS


def test_wide_errors_name_the_prompt_row():
    frame = wide_frame()
    frame.loc[1, "pricey"] = np.nan
    with pytest.raises(ValueError, match=r"quality must be .*row 1 \(query 'arc.test.0', model 'pricey'\)"):
        read_table(frame)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['cheap'\]"):
        read_table(wide_frame().drop(columns="cheap"))


def test_wide_signals_read_from_model_pipe_columns():
    frame = wide_frame().assign(**{"cheap|logprob": [-0.1, -2.0], "pricey|logprob": [np.nan, -0.01]})
    table = read_table(frame, signal_columns=["logprob"])
    np.testing.assert_array_equal(table.signals["logprob"], [[-2.0, -0.01], [-0.1, np.nan]])


# --------------------------------------------------------------------------- #
# prices
# --------------------------------------------------------------------------- #


def test_read_prices_skips_unpriced_models_with_warning(tmp_path):
    path = tmp_path / "models.csv"
    path.write_text(
        "model,size,input_price_per_mtok_usd,output_price_per_mtok_usd\n"
        "small,7B,0.2,0.2\nbig,,10,30\nsecret,,,\n"
    )
    with pytest.warns(UserWarning, match=r"skipped 1 model\(s\) without prices: \['secret'\]"):
        prices = read_prices(path)
    assert prices == {"small": (0.2, 0.2), "big": (10.0, 30.0)}


def test_read_prices_refuses_half_priced_and_bad_rows(tmp_path):
    path = tmp_path / "models.csv"
    path.write_text("model,input_price_per_mtok_usd,output_price_per_mtok_usd\nsmall,0.2,\n")
    with pytest.raises(ValueError, match=r"only one of its two prices.*row 0 \(model 'small'\)"):
        read_prices(path)
    path.write_text("model,input_price_per_mtok_usd,output_price_per_mtok_usd\nsmall,0.2,0.2\nsmall,1,1\n")
    with pytest.raises(ValueError, match="more than once"):
        read_prices(path)
    path.write_text("model,input_price_per_mtok_usd,output_price_per_mtok_usd\nsmall,cheap,0.2\n")
    with pytest.raises(ValueError, match=r"input_price_per_mtok_usd must be a number >= 0.*'cheap'"):
        read_prices(path)
    path.write_text("model,price\nsmall,0.2\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_prices(path)


def test_read_table_checks_every_model_is_priced():
    prices = {"small": (0.2, 0.2), "mid": (1.0, 2.0), "big": (10.0, 30.0)}
    assert read_table(long_frame(), prices=prices).n_models == 3
    unpriced = r"no price for model\(s\) \['mid'\]; priced models not in the table: \['mdi'\]"
    with pytest.raises(ValueError, match=unpriced):
        read_table(long_frame(), prices={"small": (0.2, 0.2), "mdi": (1, 2), "big": (10, 30)})
    with pytest.raises(ValueError, match="price of 'big'"):
        read_table(long_frame(), prices={**prices, "big": (-1.0, 3.0)})


# --------------------------------------------------------------------------- #
# the real RouterBench subset (skipped when ../shared/data is absent)
# --------------------------------------------------------------------------- #


def test_real_routerbench_subset(routerbench_subset):
    frame = pd.read_parquet(routerbench_subset / "routerbench_subset.parquet")
    table = read_table(routerbench_subset / "routerbench_subset.parquet")
    assert table.quality.shape == (3150, 11)
    mean_cost = table.cost.mean(axis=0)
    assert np.all(np.diff(mean_cost) >= 0)
    listed = pd.read_csv(routerbench_subset / "models.csv").set_index("model")
    expected = frame.groupby("model")["quality"].mean()
    np.testing.assert_allclose(table.quality.mean(axis=0), expected[list(table.models)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(table.quality.mean(axis=0), listed.loc[list(table.models), "mean_quality"], atol=1e-6)
    np.testing.assert_allclose(mean_cost, listed.loc[list(table.models), "mean_cost_usd"], rtol=1e-5)
    assert table.responses is not None and (table.responses != "").all()
    assert set(table.tasks) == {"arc-challenge", "mbpp", "winogrande"}


def test_real_routerbench_subset_csv_matches_parquet(routerbench_subset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_csv = read_table(routerbench_subset / "routerbench_subset.csv.gz")
    assert_same(from_csv, read_table(routerbench_subset / "routerbench_subset.parquet"))


def test_boolean_quality_is_a_number_but_boolean_cost_is_not():
    frame = long_frame()
    frame["quality"] = frame["quality"].astype(bool)
    np.testing.assert_array_equal(read_table(frame).quality, read_table(long_frame()).quality)
    frame["cost_usd"] = True
    with pytest.raises(ValueError, match=r"cost_usd must be .*9 row\(s\) fail"):
        read_table(frame)
