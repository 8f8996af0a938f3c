"""The loss curve every run draws, as hand-written SVG (analysis/loss_svg.py)."""

from __future__ import annotations

import math
from xml.etree import ElementTree

from rnn2gpt.analysis import loss_svg

SVG = "{http://www.w3.org/2000/svg}"


def parse(text: str) -> ElementTree.Element:
    return ElementTree.fromstring(text)


def points(element: ElementTree.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in element.get("points").split()]


def test_the_curve_draws_both_series_inside_the_axes():
    train = [(step, 4.0 - step / 100) for step in range(1, 201)]
    val = [(50, 3.6), (100, 3.1), (200, 2.2)]
    root = parse(loss_svg.loss_curve_svg(train, val, title="gpt on char <tokens>"))
    drawn = points(root.find(f"{SVG}polyline[@class='train']"))
    assert len(drawn) == 200
    left, top = loss_svg.MARGINS["left"], loss_svg.MARGINS["top"]
    right = loss_svg.WIDTH - loss_svg.MARGINS["right"]
    bottom = loss_svg.HEIGHT - loss_svg.MARGINS["bottom"]
    assert all(left <= x <= right and top <= y <= bottom for x, y in drawn)
    xs, ys = zip(*drawn)
    assert list(xs) == sorted(xs) and list(ys) == sorted(ys), "steps rightwards, loss falling"
    assert len(root.findall(f"{SVG}circle[@class='validation']")) == 3
    assert root.find(f"{SVG}text[@class='title']").text == "gpt on char <tokens>"  # escaped
    legend = [t.text for t in root.findall(f"{SVG}text[@class='legend']")]
    assert legend == ["train", "validation"]


def test_the_ticks_are_round_and_cover_the_data():
    assert loss_svg.nice_ticks(0, 2000) == [0, 500, 1000, 1500, 2000]
    assert loss_svg.nice_ticks(1.63, 4.21) == [1, 2, 3, 4, 5]
    assert loss_svg.nice_ticks(1.63, 2.01) == [1.6, 1.7, 1.8, 1.9, 2.0, 2.1]
    assert loss_svg.nice_ticks(5, 5) == [5, 5.2, 5.4, 5.6, 5.8, 6], "one point: a unit range"


def test_a_long_series_keeps_each_columns_extremes():
    train = [(step, 2.0 + math.sin(step)) for step in range(100_000)]
    train[50_001] = (50_001, 9.0)  # a spike must stay visible
    kept = loss_svg.thin(train, 1000, lambda step: step / 100)  # 100 points a column
    assert (50_001, 9.0) in kept
    assert len(kept) <= 4 * 1000 and kept == sorted(kept)
    column = [p for p in train if 500 <= p[0] < 600]
    lowest, highest = min(column, key=lambda p: p[1]), max(column, key=lambda p: p[1])
    assert {column[0], lowest, highest, column[-1]} <= set(kept)
    root = parse(loss_svg.loss_curve_svg(train, [], title="long"))
    columns = loss_svg.WIDTH - loss_svg.MARGINS["left"] - loss_svg.MARGINS["right"]
    assert len(points(root.find(f"{SVG}polyline[@class='train']"))) <= 4 * (columns + 1)
    assert root.find(f"{SVG}circle") is None, "no validation points, no markers"


def test_a_run_without_losses_draws_nothing(tmp_path):
    events = [{"event": "train", "step": 1, "loss": float("nan")}, {"event": "end", "step": 1}]
    assert loss_svg.write_loss_curve_svg(events, tmp_path / "c.svg") is None
    assert not (tmp_path / "c.svg").exists()
    events.append({"event": "eval", "step": 1, "val_loss": 2.5})
    written = loss_svg.write_loss_curve_svg(events, tmp_path / "c.svg", title="one point")
    assert parse(written.read_text()).find(f"{SVG}circle") is not None
    assert not list(tmp_path.glob("*.partial"))
