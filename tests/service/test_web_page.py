"""The technician's page in a real headless Chromium (Debian's), against a running agent with
simulated Modbus slaves: what it lists, that it follows the slaves live, a dead slave's row with
its frames, and writes (with the password, confirmed, checked, read back; refused without).

A screenshot of each page is kept under build/artefacts/ (EDGE_AGENT_ARTEFACTS to move it), for a
person to look at: tests can say that a value is there, not that the page is readable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config.web import MIN_CLIENTS
from agent.testkit.browser import Browser, Page
from agent.testkit.modbus import ModbusBus, SimSlave
from agent.testkit.net import free_port
from agent.testkit.runner import AgentRunner
from drivers.modbus.schema import ModbusPoint

from .test_web import SECRET, basic
from .test_web import SITE as WEB_SITE

# test_web's site, with a writable setpoint on the tank, units, and a second device.
SITE = (
    WEB_SITE.replace('id = "kit"', 'id = "pump-house"').replace(
        "  address = 0\n", '  address = 0\n  unit = "cm"\n'
    )
    + """  [[device.point]]
  name = "setpoint"
  address = 1
  unit = "cm"
  writable = true
  min = 0
  max = 100
[[device]]
name = "pump"
bus = "plc"
unit = 4
interval = "200ms"
  [[device.point]]
  name = "speed"
  address = 0
  unit = "rpm"
"""
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with Browser(tmp_path / "chromium") as chromium:
        yield chromium


@pytest.fixture
def artefacts(request: pytest.FixtureRequest) -> Path:
    root = Path(
        os.environ.get("EDGE_AGENT_ARTEFACTS", Path(__file__).parents[2] / "build/artefacts")
    )
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return root / version / "web"


def site(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], **web: object
) -> tuple[str, SimSlave, SimSlave]:
    bus = modbus_bus("tcp")
    tank = bus.add(
        3,
        points=[
            ModbusPoint("level", address=0, unit="cm"),
            ModbusPoint("setpoint", address=1, unit="cm", writable=True, min=0, max=100),
        ],
    )
    pump = bus.add(4, points=[ModbusPoint("speed", address=0, unit="rpm")])
    tank.set("level", 42)
    tank.set("setpoint", 10)
    pump.set("speed", 1450)
    port = free_port()
    edge_agent.start(
        SITE,
        buses={"plc": bus},
        overrides={"web": {"enabled": True, "listen": f"127.0.0.1:{port}", **web}},
    )
    edge_agent.wait_sample("tank", "level", 42)
    edge_agent.wait_sample("pump", "speed", 1450)
    return f"http://127.0.0.1:{port}/", tank, pump


def text_of(page: Page, selector: str) -> str:
    return str(page.evaluate(f"document.querySelector({json.dumps(selector)})?.textContent"))


def wait_text(page: Page, selector: str, wanted: str, timeout: float = 15.0) -> None:
    page.wait_for(
        f"document.querySelector({json.dumps(selector)})?.textContent.includes({json.dumps(wanted)})",
        timeout,
    )


def test_the_page_follows_the_slaves_and_shows_a_dead_ones_frames(
    edge_agent: AgentRunner,
    modbus_bus: Callable[..., ModbusBus],
    browser: Browser,
    artefacts: Path,
) -> None:
    url, tank, pump = site(edge_agent, modbus_bus)
    page = browser.page()
    page.open(url)
    page.wait_for("document.querySelectorAll('#devices tr[data-device]').length === 2")
    assert page.evaluate(
        "[...document.querySelectorAll('#devices tr[data-device]')].map(r => [r.dataset.device, r.dataset.state])"
    ) == [
        ["tank", "ok"],
        ["pump", "ok"],
    ]
    assert "pump-house" in text_of(page, "#agent-id")
    wait_text(page, "[data-link]", "connected")
    page.screenshot(artefacts / "overview.png")

    # a device's page follows its slave
    page.open(url + "#/device/tank")
    wait_text(page, 'td[data-point="level"]', "42")
    tank.set("level", 57)
    wait_text(page, 'td[data-point="level"]', "57")
    assert text_of(page, "#plan") == "holding 0-1 (2 registers): level, setpoint"
    page.wait_for("document.querySelector('figure[data-plot=\"level\"] polyline')")
    assert page.evaluate("document.getElementById('write')") is None  # writes are off
    page.screenshot(artefacts / "device.png")

    # a dead slave turns its row to failing, its last frames under it
    pump.dead = True
    page.open(url)
    page.wait_for(
        "document.querySelector('#devices tr[data-device=\"pump\"]')?.dataset.state === 'failing'",
        30,
    )
    frames = text_of(page, 'tr[data-frames="pump"] pre')
    assert "<- holding 0: no response within 0.3 s" in frames, frames
    assert (
        page.evaluate("document.querySelector('#devices tr[data-device=\"tank\"]').dataset.state")
        == "ok"
    )
    page.screenshot(artefacts / "overview-failing.png")
    page.open(url + "#/device/pump")
    page.wait_for("document.querySelector('h1[data-device=\"pump\"]')?.dataset.state === 'failing'")
    assert text_of(page, "#frames") == frames or text_of(page, "#frames")
    assert "last error" in text_of(page, "#last-error")
    page.screenshot(artefacts / "device-failing.png")

    # on a phone's screen, and the log
    phone = browser.page(width=390, height=844, mobile=True)
    phone.open(url)
    phone.wait_for("document.querySelector('#devices tr[data-device=\"pump\"]')")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # tables scroll inside
    phone.screenshot(artefacts / "overview-phone.png")
    page.open(url + "#/log")
    wait_text(page, "#log", "running: 2 device(s)")
    page.screenshot(artefacts / "log.png")

    # the agent gone: the page says what it shows is old
    edge_agent.stop()
    page.wait_for("document.getElementById('freshness').classList.contains('stale')")
    assert page.errors() == phone.errors() == []  # the page's script never failed


def test_a_write_needs_the_password_and_a_confirmation_and_is_read_back(
    edge_agent: AgentRunner,
    modbus_bus: Callable[..., ModbusBus],
    browser: Browser,
    tmp_path: Path,
    artefacts: Path,
) -> None:
    secret = tmp_path / "web.pw"
    secret.write_text(SECRET + "\n")
    url, tank, _ = site(edge_agent, modbus_bus, password_file=str(secret), allow_writes=True)

    # without the password: neither the page nor a write
    stranger = browser.page()
    stranger.open(url + "api/status")
    assert "needs its password" in str(stranger.evaluate("document.body.innerText"))
    refused = stranger.evaluate(
        """fetch('/api/devices/tank/points/setpoint', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-Edge-Agent': 'write'},
            body: JSON.stringify({value: 77})}).then(r => r.status)"""
    )
    assert refused == 401

    page = browser.page(headers=basic(SECRET))
    page.open(url + "#/device/tank")
    page.wait_for("document.getElementById('write-point')")
    page.evaluate("document.getElementById('write-point').value = 'setpoint'")
    page.evaluate("document.getElementById('write-value').value = '55'")
    page.evaluate("document.getElementById('write-ask').click()")
    wait_text(page, "#write-confirm", "write 55 to tank.setpoint")
    assert tank.get("setpoint") == 10  # nothing written before the confirmation
    page.screenshot(artefacts / "write-confirm.png")
    page.evaluate("document.getElementById('write-confirm').click()")
    wait_text(page, "#write-result", "read back 55")
    assert tank.get("setpoint") == 55
    wait_text(page, 'td[data-point="setpoint"]', "55")

    # the command's checks: above max is refused, nothing written
    page.evaluate("document.getElementById('write-value').value = '150'")
    page.evaluate("document.getElementById('write-ask').click()")
    page.evaluate("document.getElementById('write-confirm').click()")
    wait_text(page, "#write-result", "150 is above setpoint's max 100")
    assert tank.get("setpoint") == 55
    page.screenshot(artefacts / "write-refused.png")
    edge_agent.wait_log(r"web write from 127\.0\.0\.1: tank\.setpoint set: read back 55")
    assert edge_agent.status()["link"]["commands"] == {"ok": 1, "refused": 1}
    assert SECRET not in edge_agent.log
    assert page.errors() == []


LONG = "north_field_pump_station_tank_level_03"


def test_what_devices_say_is_text_and_a_text_point_takes_digits(
    edge_agent: AgentRunner,
    modbus_bus: Callable[..., ModbusBus],
    browser: Browser,
    tmp_path: Path,
    artefacts: Path,
) -> None:
    secret = tmp_path / "web.pw"
    secret.write_text(SECRET + "\n")
    bus = modbus_bus("tcp")
    markup = "<img src=x onerror=window.pwned=1>"
    tank = bus.add(
        3,
        points=[
            ModbusPoint("level", address=0, unit=markup),
            ModbusPoint("tag", address=1, type="string", length=8, writable=True),
        ],
    )
    tank.set("level", 42)
    tank.set("tag", "<i>x</i>")
    port = free_port()
    site = WEB_SITE.replace('name = "tank"', f'name = "{LONG}"').replace(
        "  address = 0\n", f"  address = 0\n  unit = {json.dumps(markup)}\n"
    )
    site += '  [[device.point]]\n  name = "tag"\n  address = 1\n  type = "string"\n'
    site += "  length = 8\n  writable = true\n"
    edge_agent.start(
        site,
        buses={"plc": bus},
        overrides={
            "web": {
                "enabled": True,
                "listen": f"127.0.0.1:{port}",
                "password_file": str(secret),
                "allow_writes": True,
            }
        },
    )
    edge_agent.wait_sample(LONG, "tag", "<i>x</i>")
    url = f"http://127.0.0.1:{port}/"
    page = browser.page(headers=basic(SECRET))
    page.open(url + f"#/device/{LONG}")
    wait_text(page, 'td[data-point="tag"]', "<i>x</i>")
    wait_text(page, 'figure[data-plot="level"] figcaption', markup)
    assert page.evaluate("document.querySelectorAll('#view img, #view i').length") == 0
    assert page.evaluate("window.pwned") is None

    # a text point takes what is typed as text, digits too
    page.evaluate("document.getElementById('write-point').value = 'tag'")
    page.evaluate("document.getElementById('write-value').value = '0042'")
    page.evaluate("document.getElementById('write-ask').click()")
    page.evaluate("document.getElementById('write-confirm').click()")
    wait_text(page, "#write-result", "read back 0042")
    assert tank.get("tag") == "0042"

    # a phone shows a long name without the page scrolling sideways
    phone = browser.page(width=390, height=844, mobile=True, headers=basic(SECRET))
    phone.open(url + f"#/device/{LONG}")
    wait_text(phone, 'td[data-point="tag"]', "0042")
    phone.evaluate("document.getElementById('write-value').value = 'a-long-tag'")
    phone.evaluate("document.getElementById('write-ask').click()")  # the confirmation's button
    phone.screenshot(artefacts / "device-phone.png")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    assert page.errors() == phone.errors() == []


def test_an_address_it_cannot_decode_still_shows_the_page(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], browser: Browser
) -> None:
    url, _, _ = site(edge_agent, modbus_bus)
    page = browser.page()
    page.open(url + "#/device/100%")  # typed by hand: '%' and no escape after it
    wait_text(page, "#freshness", "no device '100%'")
    page.open(url + "#/")
    page.wait_for("document.querySelectorAll('#devices tr[data-device]').length === 2")
    assert page.errors() == []


def test_a_late_answer_for_the_page_left_is_not_drawn(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], browser: Browser
) -> None:
    url, _, _ = site(edge_agent, modbus_bus)
    page = browser.page()
    page.open(url + "#/device/tank")
    wait_text(page, 'td[data-point="level"]', "42")
    # The page's fetches, counted until their JSON is read and the code after it has run; the
    # device's own held back until let go; and what #view shows each time it changes.
    page.evaluate(
        """(() => {
        window.pending = 0; window.held = []; window.hold = true; window.drawn = [];
        const real = window.fetch;
        window.fetch = (url, options) => {
            window.pending += 1;
            const done = (response) => {
                const json = response.json.bind(response);
                response.json = () => json().finally(() => setTimeout(() => { window.pending -= 1; }));
                return response;
            };
            if (window.hold && url === '/api/devices/tank') {
                return new Promise((resolve) => window.held.push(() => resolve(real(url, options).then(done))));
            }
            return real(url, options).then(done);
        };
        new MutationObserver(() => window.drawn.push(document.querySelector('#view h1')?.textContent))
            .observe(document.getElementById('view'), { childList: true });
    })()"""
    )
    page.wait_for("window.held.length === 1")  # the device's next poll, waiting
    page.evaluate("location.hash = '#/log'")
    wait_text(page, "#log", "running: 2 device(s)")
    page.evaluate("window.hold = false; window.drawn = []; window.held.forEach((go) => go())")
    page.wait_for("window.pending === 0")  # the device's answer read, and all it led to done
    assert text_of(page, "#view h1") == "Recent log"
    assert "tank" not in page.evaluate("window.drawn"), page.evaluate("window.drawn")
    assert page.errors() == []


def test_the_fewest_clients_allowed_serve_a_page_whole(
    edge_agent: AgentRunner, modbus_bus: Callable[..., ModbusBus], browser: Browser
) -> None:
    """At ``max_clients = 1``, the page's style or script was refused (503): it never drew; at
    2, under load, the first overview's two answers could wait on the browser's own
    connections beyond 15 s."""
    url, _, _ = site(edge_agent, modbus_bus, max_clients=MIN_CLIENTS)
    page = browser.page()
    page.open(url)
    page.evaluate(
        """(() => { window.busy = 0; const real = window.fetch;
        window.fetch = (...args) => real(...args).then((r) => { if (r.status === 503) window.busy += 1; return r; });
        })()"""
    )
    stamp = "document.getElementById('freshness').textContent"
    for _ in range(5):  # five redraws of the overview, each of them whole
        before = page.evaluate(stamp)
        page.wait_for(f"{stamp} !== {json.dumps(before)}")
    assert page.evaluate("window.busy") == 0
    assert "live" in text_of(page, "#freshness")
