"""The ``composer_sources`` hook: named desired-state sources, chosen by ``manager.source`` or
``-f FILE``, each touching only the containers it owns."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import yaml

from composer_core import hookimpl
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_MANAGER
from composer_core.errors import PluginError, UsageError
from composer_core.fleet.connectors import Connector
from composer_core.fleet.sources import (
    LABEL_PLATFORM,
    DesiredState,
    Observation,
    SourceUnavailable,
    open_source,
    run_source_pass,
)
from composer_core.records import DesiredStateSource
from composer_plugins.file_source import SETTLE_SECONDS, FileSource
from tests.engine_helpers import remove_by_name, unique


class MemorySource:
    """A source whose desired state the test sets; it records what it hears."""

    name = "memory"
    platform = "memory"

    def __init__(self) -> None:
        self.connectors: list[Connector] = []
        self.held: dict[str, str] = {}
        self.unavailable: str | None = None
        self.observed: list[Observation] = []
        self.closed = False

    def describe(self) -> str:
        return "memory"

    def desired(self) -> DesiredState:
        if self.unavailable:
            raise SourceUnavailable(self.unavailable)
        return DesiredState(list(self.connectors), held=dict(self.held),
                            names={cid: cid for cid in self.held})

    def observe(self, observation: Observation) -> None:
        self.observed.append(observation)

    def close(self) -> None:
        self.closed = True


class MemoryPlugin:
    def __init__(self) -> None:
        self.source = MemorySource()
        self.options: list[dict[str, Any]] = []

    @hookimpl
    def composer_sources(self) -> DesiredStateSource:
        def open_memory(settings: Any, options: Any) -> MemorySource:
            self.options.append(dict(options))
            return self.source

        return DesiredStateSource(name="memory", open=open_memory, platform="memory",
                                  description="a test source")


@pytest.fixture
def memory(plugins) -> Any:
    plugin = MemoryPlugin()
    plugins.register(plugin, name="memory-plugin")
    yield plugin
    plugins.unregister("memory-plugin")


def test_the_hook_contributes_named_sources_and_settings_choose(memory, plugins, make_settings,
                                                                tmp_path) -> None:
    sources = plugins.sources()
    assert set(sources) == {"file", "opencti", "memory"}
    assert sources.owner("memory") == "memory-plugin" and sources.owner("file") == "file"
    assert sources["opencti"].platform == "opencti" and sources["file"].platform is None
    chosen = open_source(make_settings({"manager.source": "memory"}), plugins, {})
    assert chosen is memory.source and memory.options == [{}]
    path = tmp_path / "c.yaml"
    path.write_text("connectors: [{id: a1, image: 'alpine:3'}]\n")
    # -f FILE means the file source, whatever manager.source says
    by_file = open_source(make_settings({"manager.source": "memory"}), plugins, {"file": str(path)})
    assert isinstance(by_file, FileSource) and [c.id for c in by_file.desired().connectors] == ["a1"]
    with pytest.raises(PluginError, match="no desired-state source named 'nope'") as err:
        open_source(make_settings({"manager.source": "nope"}), plugins, {})
    assert "available: file, memory, opencti" in str(err.value) and err.value.exit_code == 3
    with pytest.raises(UsageError, match="the file source needs a connectors file"):
        open_source(make_settings(), plugins, {})


def test_a_source_name_two_plugins_contribute_is_refused(memory, plugins, make_settings) -> None:
    class Twin:
        @hookimpl
        def composer_sources(self):
            return DesiredStateSource(name="memory", open=lambda s, o: None, platform="memory")

    plugins.register(Twin(), name="twin")
    try:
        record = next(r for r in plugins.records() if r.name == "twin")
        assert record.status == "failed" and "desired-state source named 'memory'" in (record.reason or "")
        with pytest.raises(PluginError, match="two plugins contribute a desired-state source"):
            open_source(make_settings({"manager.source": "memory"}), plugins, {})
    finally:
        plugins.unregister("twin")


def test_a_bad_source_name_fails_its_plugin(plugins) -> None:
    class Bad:
        @hookimpl
        def composer_sources(self):
            return DesiredStateSource(name="Memory Source", open=lambda s, o: None)

    plugins.register(Bad(), name="bad-source")
    try:
        record = next(r for r in plugins.records() if r.name == "bad-source")
        assert record.status == "failed" and "'Memory Source' is invalid" in (record.reason or "")
        assert "Memory Source" not in plugins.sources()
    finally:
        plugins.unregister("bad-source")


def test_an_unavailable_source_changes_nothing_and_calls_no_engine(memory, plugins, make_settings) -> None:
    class NoEngine:
        name = "none"

        def __getattr__(self, attr: str) -> Any:
            raise AssertionError(f"the engine was called ({attr}) although the source did not answer")

    memory.source.unavailable = "the listing failed"
    with pytest.raises(SourceUnavailable, match="the listing failed") as err:
        run_source_pass(NoEngine(), make_settings(), plugins, memory.source)  # type: ignore[arg-type]
    assert err.value.exit_code == 16 and memory.source.observed == []


# --- on the engines ----------------------------------------------------------------------------


@pytest.mark.integration
def test_sources_side_by_side_never_touch_each_other(engine, bench, manager, engine_settings, plugins,
                                                     connect_backend, memory, tmp_path) -> None:
    settings = engine_settings()
    backend = connect_backend(settings)
    image = f"{bench.registry_open}/{bench.image}"
    from_file, from_memory = unique("xtm-src-file"), unique("xtm-src-mem")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"connectors": [{"id": from_file, "name": from_file, "image": image}]}))
    try:
        file_source = FileSource(str(path))
        first = run_source_pass(backend, settings, plugins, file_source, stop_timeout=1)
        assert [(s.id, s.action, s.result) for s in first.steps] == [(from_file, "deploy", "ok")]

        memory.source.connectors = [Connector(id=from_memory, name=from_memory, image=image)]
        second = run_source_pass(backend, settings, plugins, memory.source, stop_timeout=1)
        # the file's container is not the memory source's: not an orphan to remove
        assert [(s.id, s.action, s.result) for s in second.steps] == [(from_memory, "deploy", "ok")]
        labels = {c.name: c.labels for c in backend.observe({LABEL_MANAGER: manager})}
        assert labels[from_memory][LABEL_PLATFORM] == "memory"
        assert LABEL_PLATFORM not in labels[from_file]  # the file source's containers, as before
        (observed,) = memory.source.observed
        assert [c.name for c in observed.containers] == [from_memory]

        # the file pass does not see the memory source's container either
        third = run_source_pass(backend, settings, plugins, file_source, stop_timeout=1)
        assert [(s.id, s.action) for s in third.steps] == [(from_file, "nothing")]

        # a connector wanting a name another source's container holds is held, not deployed
        memory.source.connectors = [Connector(id="intruder", name=from_file, image=image, env={"X": "1"})]
        fourth = run_source_pass(backend, settings, plugins, memory.source, stop_timeout=1)
        steps = {(s.id, s.action, s.result) for s in fourth.steps}
        assert ("intruder", "nothing", "failed") in steps
        assert (from_memory, "remove", "ok") in steps  # its own orphan goes
        intruder = next(s for s in fourth.steps if s.id == "intruder")
        assert "name collision" in intruder.reason
        after = {c.name: c for c in backend.observe({LABEL_MANAGER: manager})}
        assert set(after) == {from_file} and after[from_file].labels[LABEL_CONNECTOR] == from_file

        # held connectors keep their container, whatever it is
        memory.source.connectors = [Connector(id=from_memory, name=from_memory, image=image)]
        run_source_pass(backend, settings, plugins, memory.source, stop_timeout=1)
        memory.source.connectors = []
        memory.source.held = {from_memory: "a secret cannot be decrypted"}
        fifth = run_source_pass(backend, settings, plugins, memory.source, stop_timeout=1)
        assert [(s.id, s.action, s.result) for s in fifth.steps] == [(from_memory, "nothing", "failed")]
        assert {c.name for c in backend.observe({LABEL_MANAGER: manager})} == {from_file, from_memory}
    finally:
        remove_by_name(engine, bench, from_file)
        remove_by_name(engine, bench, from_memory)


# --- the file source reads only a settled file -------------------------------------------------

def _connectors_file(path, ids: list[str], *, age: float) -> None:
    path.write_text(yaml.safe_dump({"connectors": [
        {"id": i, "name": i, "image": "localhost:5000/x:1"} for i in ids]}))
    when = time.time() - age
    os.utime(path, (when, when))


def test_the_file_source_waits_for_a_file_being_written(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    _connectors_file(path, ["a1", "a2", "a3"], age=60)
    source = FileSource(str(path))
    # saved in place: truncated, then written; its first part is valid YAML naming only a1
    _connectors_file(path, ["a1"], age=0)
    assert [c.id for c in source.desired().connectors] == ["a1", "a2", "a3"]
    _connectors_file(path, ["a1", "a2", "a3", "a4"], age=0)
    os.utime(path, ns=(time.time_ns() - int(SETTLE_SECONDS * 2e9),) * 2)  # the writer is done
    assert [c.id for c in source.desired().connectors] == ["a1", "a2", "a3", "a4"]


def test_the_file_source_reads_again_a_file_changed_while_read(tmp_path, monkeypatch) -> None:
    import composer_plugins.file_source as file_source

    path = tmp_path / "c.yaml"
    _connectors_file(path, ["a1", "a2"], age=60)
    source = FileSource(str(path))
    _connectors_file(path, ["a1", "a2", "a3"], age=60)
    real = file_source.load_connectors

    def torn(where):  # the writer comes back while the file is read
        found = real(where)
        _connectors_file(path, ["b1"], age=60)
        os.utime(path, ns=(time.time_ns() - int(SETTLE_SECONDS * 4e9),) * 2)
        return found[:1]

    monkeypatch.setattr(file_source, "load_connectors", torn)
    assert [c.id for c in source.desired().connectors] == ["a1", "a2"]  # not the torn read
    monkeypatch.setattr(file_source, "load_connectors", real)
    assert [c.id for c in source.desired().connectors] == ["b1"]  # the next ask reads it whole
