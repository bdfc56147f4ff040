"""A live throughput plot: megabits per second each way, redrawn in place about twice a second.

Why it does not flicker or grow: the figure is drawn off-screen (matplotlib's Agg
canvas, no pyplot state) into PNG bytes that replace the value of one
``ipywidgets.Image`` -- the browser swaps the picture, nothing is cleared and
re-added.  Samples live in bounded deques (``maxlen``), so a plot left running
for hours holds the last few minutes and no more.

How it stays readable: the y axes and the title speak the same unit (Mbit/s); "up" and
"down" get a panel each (one above the other, same time axis), so when both directions carry
the same rate -- as an echo does -- neither curve hides the other; and the legend (one colour
per link) sits below the panels, outside them, so it never covers a curve.
"""

from __future__ import annotations

import io
import time
from collections import deque
from typing import Iterable

import ipywidgets as w
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


class ThroughputPlot(w.VBox):
    """Throughput of one or more links (series), from cumulative byte counts.

    Feed it ``(t, bytes_up, bytes_down)`` samples -- cumulative since the start, as a
    link's counters are -- with :meth:`add`, or let :meth:`follow` consume an iterator
    of them (``lab.traffic(...)``), redrawing every ``interval`` seconds.
    """

    def __init__(self, title: str = "throughput", maxlen: int = 240, interval: float = 0.5):
        self.title, self.maxlen, self.interval = title, maxlen, interval
        self.series: dict[str, deque[tuple[float, float, float]]] = {}
        self._last: dict[str, tuple[float, int, int]] = {}
        self.stats: dict[str, dict] = {}
        self.draws = 0
        self._drawn_at = 0.0
        # Constrained layout makes room below the panels for the legend ("outside lower center").
        self.figure = Figure(figsize=(8, 4.2), dpi=90, layout="constrained")
        FigureCanvasAgg(self.figure)
        self.legend = None
        self.ax_up, self.ax_down = self.figure.subplots(2, 1, sharex=True)
        self.image = w.Image(format="png")
        self.image.add_class("vpnedu-throughput")
        self.caption = w.HTML()
        self.caption.add_class("vpnedu-throughput-caption")
        super().__init__([self.image, self.caption])
        self.draw()

    def add(self, label: str, t: float, bytes_up: int, bytes_down: int) -> None:
        """One cumulative sample of link ``label``; the rate is the change since the previous one."""
        prev = self._last.get(label)
        self._last[label] = (t, bytes_up, bytes_down)
        series = self.series.setdefault(label, deque(maxlen=self.maxlen))
        if prev is None or t <= prev[0]:
            return
        dt = t - prev[0]
        series.append((t, (bytes_up - prev[1]) / dt, (bytes_down - prev[2]) / dt))
        total_t = t - (self.stats.get(label, {}).get("t0", prev[0]) if label in self.stats else prev[0])
        st = self.stats.setdefault(label, {"t0": prev[0], "bytes_up": 0, "bytes_down": 0})
        st["bytes_up"] += bytes_up - prev[1]
        st["bytes_down"] += bytes_down - prev[2]
        st["seconds"] = total_t
        st["mbit_up"] = round(st["bytes_up"] * 8 / max(total_t, 1e-9) / 1e6, 2)
        st["mbit_down"] = round(st["bytes_down"] * 8 / max(total_t, 1e-9) / 1e6, 2)

    def follow(self, samples: Iterable[tuple[float, int, int]], label: str) -> dict:
        """Plot a live source until it ends; returns its average rates (Mbit/s each way)."""
        for t, up, down in samples:
            self.add(label, t, up, down)
            if time.monotonic() - self._drawn_at >= self.interval:
                self.draw()
        self.draw()
        return self.stats.get(label, {})

    def draw(self) -> None:
        if self.legend is not None:
            self.legend.remove()
            self.legend = None
        panels = ((self.ax_up, 1, "up (client -> server)"), (self.ax_down, 2, "down (server -> client)"))
        for ax, _, _ in panels:
            ax.clear()
        colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
        for i, (label, pts) in enumerate(self.series.items()):
            if not pts:
                continue
            ts = [p[0] for p in pts]
            for ax, col, _ in panels:
                ax.plot(ts, [p[col] * 8 / 1e6 for p in pts], color=colors[i % len(colors)], marker=".",
                        label=label)
        for ax, _, name in panels:
            ax.set_ylabel("Mbit/s")
            ax.set_title(name, fontsize=9, loc="left")
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
        self.ax_down.set_xlabel("seconds")
        self.figure.suptitle(self.title)
        handles, labels = self.ax_up.get_legend_handles_labels()
        if handles:
            self.legend = self.figure.legend(handles, labels, loc="outside lower center", fontsize=8,
                                             ncols=min(len(handles), 5), frameon=False)
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        self.image.value = buf.getvalue()
        self.draws += 1
        self._drawn_at = time.monotonic()
        self.caption.value = " &nbsp; ".join(
            f"<b>{label}</b>: {st.get('mbit_up', 0)} Mbit/s up, {st.get('mbit_down', 0)} Mbit/s down"
            for label, st in self.stats.items())
