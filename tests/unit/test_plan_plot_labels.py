"""plan --plot: schedule labels stay legible (no two overlap, none leaves the axes; coincident points share one)."""

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from ipu_snn.reporting import place_labels  # noqa: E402


def test_labels_of_nearby_and_coincident_schedules_do_not_overlap():
    points = [(12.069, 95.0, "uniform"), (12.069, 95.3, "double"), (12.07, 94.0, "two_level"),
              (7.0, 223.0, "store_all *"), (13.9, 31.0, "revolve"), (13.9, 31.0, "revolve_again")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    ax.set_yscale("log")
    labels = place_labels(ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(label, renderer) for label in labels]
    texts = [label.get_text() for label in labels]
    assert sorted(texts) == sorted(["uniform", "double", "two_level", "store_all *", "revolve = revolve_again"])
    for a, b in itertools.combinations(range(len(boxes)), 2):
        assert not boxes[a].overlaps(boxes[b]), (texts[a], texts[b])
    inside = ax.get_window_extent(renderer)
    assert all(inside.x0 <= box.x0 and box.x1 <= inside.x1 for box in boxes)
    plt.close(fig)
