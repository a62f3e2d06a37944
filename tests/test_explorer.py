"""The explorer's widget always shows the state of its controls (issue 23, item 4).

The widgets are driven from Python as the browser drives them (``control.value = ...`` is what a
comm message from a slider does). Inside a running asyncio loop (as in a kernel) renders are
deferred, so quick changes must collapse into one figure of the latest state; the figure's stated
values (its title, its legend, the PNG's ``Description``) must equal what the controls' readouts show.
"""

from __future__ import annotations

import asyncio
import base64

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from cdkd import explorer as explorer_module
from cdkd import viz
from cdkd.explorer import PredictionExplorer
from tests.test_viz import make_records

pytestmark = pytest.mark.timeout(120)


def slider_readout(value: float) -> str:
    """What the browser shows for the tau slider's ``.3g`` d3-format (JavaScript's toPrecision(3)),
    written independently of the explorer: numpy's positional formatting with 3 significant digits."""
    return np.format_float_positional(value, precision=3, unique=False, fractional=False, trim="k").rstrip(".")


def readouts(explorer: PredictionExplorer) -> dict[str, str]:
    """The controls as the browser shows them: slider numbers, the dropdown's label, the pressed button."""
    c = explorer.controls
    return {"sample": str(c["sample"].value), "joint": c["joint"].label, "resolution": c["resolution"].value,
            "tau": slider_readout(c["tau"].value)}


def shown_png(explorer: PredictionExplorer) -> bytes:
    return base64.b64decode(explorer.output.outputs[0]["data"]["image/png"])


def assert_shows_its_controls(explorer: PredictionExplorer) -> None:
    expected = readouts(explorer)
    assert viz.png_description(shown_png(explorer)) == expected  # the image on screen
    assert explorer.figure.stated == expected
    title = explorer.figure._suptitle.get_text()
    assert f"sample {expected['sample']}" in title and f"'{expected['joint']}'" in title
    assert f"{expected['resolution']} resolution" in title and f"tau = {expected['tau']}" in title
    legend = [t.get_text() for t in explorer.figure.axes[1].get_legend().get_texts()]
    assert any(f"tau = {expected['tau']}" in text for text in legend)
    assert explorer.status.value == "shown: " + viz.stated_text(expected)


@pytest.fixture
def records():
    return make_records(np.random.default_rng(3), n=3)


def test_readout_format_matches_the_browser():
    for value, text in ((1.2589254117941673, "1.26"), (10.0, "10.0"), (1.0, "1.00"), (0.1, "0.100"),
                        (31.622776601683793, "31.6"), (6.309573444801933, "6.31")):
        assert explorer_module.format_tau(value) == text == slider_readout(value)


def test_quick_changes_draw_only_the_latest_state(records):
    explorer = PredictionExplorer(records, "mpii", tau=1.0)
    shown: list[dict[str, str]] = []
    pending: list[str] = []

    async def drive() -> None:
        explorer.widget()
        explorer.output.observe(lambda change: shown.append(viz.png_description(shown_png(explorer))),
                                names="outputs")
        # tau dragged (several values, as keys held down send them), then the sample, without a pause
        for value in (1.5848931924611136, 3.1622776601683795, 6.309573444801933, 25.118864315095795):
            explorer.controls["tau"].value = value
        explorer.controls["sample"].value = 2
        explorer.controls["joint"].value = 5
        pending.append(getattr(getattr(explorer, "status", None), "value", None))  # not drawn yet: says so
        await asyncio.sleep(getattr(explorer_module, "DEFER_S", 0.15) * 4)

    asyncio.run(drive())
    assert len(shown) == 1, f"{len(shown)} figures shown for one burst of changes: {shown}"
    assert shown[0] == {"sample": "2", "joint": "l_ankle", "resolution": "student", "tau": "25.1"}
    assert pending == ["drawing ..."]
    assert explorer.renders == 2  # the first view and the figure of the latest state
    assert_shows_its_controls(explorer)


def test_a_change_during_a_render_supersedes_it(records, monkeypatch):
    """A newer change that arrives while a figure is drawn: that figure is dropped, the newer drawn."""
    explorer = PredictionExplorer(records, "mpii", tau=1.0)
    draw = explorer.render_static
    calls: list[dict] = []

    def slow_draw(**state):
        calls.append(state)
        if len(calls) == 2:  # while the first deferred render draws, the user moves tau again
            explorer.controls["tau"].value = 0.5011872336272722
        return draw(**state)

    monkeypatch.setattr(explorer, "render_static", slow_draw)

    async def drive() -> None:
        explorer.widget()
        explorer.controls["tau"].value = 3.1622776601683795
        await asyncio.sleep(explorer_module.DEFER_S * 6)

    asyncio.run(drive())
    assert [round(c["tau"], 3) for c in calls] == [1.0, 3.162, 0.501]
    assert viz.png_description(shown_png(explorer))["tau"] == "0.501"
    assert explorer.renders == 2  # the tau = 3.16 figure was drawn but never shown
    assert_shows_its_controls(explorer)


def test_every_control_without_an_event_loop(records):
    """Outside a kernel's loop (a script, a test), each change draws at once, and still states its values."""
    explorer = PredictionExplorer(records, "mpii", tau=2.0)
    explorer.widget(joint="l_wrist")
    assert_shows_its_controls(explorer)
    for name, value in (("tau", 1.2589254117941673), ("sample", 1), ("joint", 3), ("resolution", "teacher"),
                        ("tau", 10.0)):
        explorer.controls[name].value = value
        assert_shows_its_controls(explorer)
    assert explorer.figure.stated["tau"] == "10.0" and explorer.renders == 6


def test_costly_sliders_update_on_release(records):
    explorer = PredictionExplorer(records, "mpii")
    explorer.widget()
    assert explorer.controls["sample"].continuous_update is False
    assert explorer.controls["tau"].continuous_update is False
    assert explorer.controls["tau"].readout_format == explorer_module.TAU_READOUT


def test_rerunning_the_cell_starts_from_the_default_state(records):
    explorer = PredictionExplorer(records, "mpii", tau=2.0)
    explorer.widget(joint=4)
    explorer.controls["tau"].value = 25.118864315095795
    explorer.controls["sample"].value = 2
    assert explorer.figure.stated["tau"] == "25.1"
    explorer.widget(joint=4)  # the explorer cell run again
    assert explorer.controls["tau"].value == 2.0 and explorer.controls["sample"].value == 0
    assert explorer.figure.stated == {"sample": "0", "joint": "l_knee", "resolution": "student", "tau": "2.00"}
    assert explorer.tau == 2.0 and explorer.render_static(0, 0).stated["tau"] == "2.00"


def test_a_failed_render_says_so_in_the_status_line(records, monkeypatch):
    explorer = PredictionExplorer(records, "mpii")
    explorer.widget()

    def broken(**state):
        raise RuntimeError("no logits")

    monkeypatch.setattr(explorer, "render_static", broken)
    with pytest.raises(RuntimeError, match="no logits"):
        explorer.controls["sample"].value = 1
    assert explorer.status.value == "could not draw: RuntimeError: no logits"
