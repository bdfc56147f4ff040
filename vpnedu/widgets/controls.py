"""Start and stop buttons for the lab's server and client.

They call the same methods a notebook cell would (``lab.start_server()`` ...), which
in real mode start and stop the ``vpnedu server`` / ``vpnedu client`` processes and
in simulated mode the simulated daemons.  Errors appear as one line under the
buttons, never as a traceback.
"""

from __future__ import annotations

import html

import ipywidgets as w

from ..errors import VpneduError


class ControlPanel(w.VBox):
    """Buttons for ``lab.start_server/stop_server/start_client/stop_client`` and a status line."""

    def __init__(self, lab):
        self.lab = lab
        self.buttons = {
            "start server": w.Button(description="Start server", button_style="success"),
            "stop server": w.Button(description="Stop server", button_style="danger"),
            "start client": w.Button(description="Start client", button_style="success"),
            "stop client": w.Button(description="Stop client", button_style="danger"),
        }
        actions = {"start server": lab.start_server, "stop server": lab.stop_server,
                   "start client": lab.start_client, "stop client": lab.stop_client}
        for name, b in self.buttons.items():
            b.on_click(lambda _b, name=name, act=actions[name]: self._do(name, act))
        self.status = w.HTML()
        self.status.add_class("vpnedu-control-status")
        self.history: list[str] = []
        super().__init__([w.HBox(list(self.buttons.values())), self.status])
        self.show_state()

    def _do(self, name: str, action) -> None:
        try:
            action()
            self.history.append(f"{name}: ok")
        except VpneduError as e:
            self.history.append(f"{name}: {e}")
        self.show_state()

    def running(self) -> dict[str, bool]:
        out = {}
        for host in ("server", "client"):
            try:
                out[host] = bool(self.lab.status(host))
            except VpneduError:
                out[host] = False
        return out

    def show_state(self) -> None:
        state = self.running()
        line = ", ".join(f"{h}: {'running' if up else 'stopped'}" for h, up in state.items())
        last = self.history[-1] if self.history else ""
        self.status.value = f"<code>{html.escape(line)}</code>" + (f"<br><i>{html.escape(last)}</i>" if last else "")
